#!/usr/bin/env bash
# Fuzz the parsers with libFuzzer (Sources/cvt-fuzz/Fuzz.swift), or replay the seed corpora.
#
#   Scripts/fuzz.sh replay                 every seed in Tests/Fuzz/<target>/ through a normal build (CI)
#   Scripts/fuzz.sh run [SECONDS] [TARGET...]
#                                          libFuzzer for SECONDS (default 30) per target (default: all);
#                                          CI runs 10 s each; a longer run: Scripts/fuzz.sh run 3600 image
#
# Targets: safetensors pickle zip config preprocessor image idx. The fuzzing build lives in
# .build/fuzz (Swift with -sanitize=fuzzer and -DFUZZING, C with coverage instrumentation).
# Bounds: inputs up to 64 KiB (-max_len), any single allocation above 512 MB (-malloc_limit_mb) or
# a peak RSS above 2 GB (-rss_limit_mb) is a failure, as is a crash or an input taking over 10 s.
# New inputs the fuzzer finds go to .build/fuzz/corpus/<target> (the committed seeds are not
# changed); a failing input is written to .build/fuzz/crash-* and replayed with
# `.build/debug/cvt-fuzz TARGET FILE`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/opt/swift/usr/bin:$PATH
export OMP_WAIT_POLICY=passive
TARGETS=(safetensors pickle zip config preprocessor image idx)

mode=${1:-replay}
case "$mode" in
replay)
    swift build --product cvt-fuzz
    for t in "${TARGETS[@]}"; do .build/debug/cvt-fuzz "$t" "Tests/Fuzz/$t"; done
    ;;
run)
    seconds=${2:-30}
    shift $(( $# > 1 ? 2 : 1 ))
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=("${TARGETS[@]}")
    swift build --product cvt-fuzz --scratch-path .build/fuzz \
        -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING -Xcc -fsanitize=fuzzer-no-link
    exe=.build/fuzz/debug/cvt-fuzz
    for t in "${targets[@]}"; do
        corpus=.build/fuzz/corpus/$t
        mkdir -p "$corpus"
        echo "== $t: $seconds s"
        CVT_FUZZ_TARGET=$t "$exe" "$corpus" "Tests/Fuzz/$t" -max_total_time="$seconds" -max_len=65536 \
            -malloc_limit_mb=512 -rss_limit_mb=2048 -timeout=10 -artifact_prefix=.build/fuzz/crash-"$t"- \
            -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+ *DONE|==|stat::number_of_executed_units|SUMMARY|ERROR|INFO: Seed)" || true
        if ls .build/fuzz/crash-"$t"-* >/dev/null 2>&1; then
            echo "fuzz target $t failed: see $(ls .build/fuzz/crash-"$t"-* | head -1)" >&2
            exit 1
        fi
    done
    ;;
*)
    echo "usage: $0 replay | run [SECONDS] [TARGET...]" >&2
    exit 64
    ;;
esac
