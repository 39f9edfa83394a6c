#!/usr/bin/env bash
# The library's concurrency tests (tasks sharing pipelines and models, settings changed during
# calls, cancellation) under ThreadSanitizer; any report fails. Our kernels run on our own thread
# team here (CVT_TEAM=own): Debian's libgomp is not built for ThreadSanitizer, so it cannot see
# the ordering that OpenMP's fork and join give, and reports every hand-over as a race.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
CVT_TEAM=own OMP_WAIT_POLICY=passive swift test --disable-swift-testing --sanitize=thread \
    --scratch-path .build-tsan --filter CvtKitLibraryTests >"$log" 2>&1 || status=$?
grep -E "Executed .* tests|error:" "$log" | tail -3
if grep -q "WARNING: ThreadSanitizer" "$log"; then
    grep -A30 "WARNING: ThreadSanitizer" "$log" | head -80
    echo "ThreadSanitizer: $(grep -c 'WARNING: ThreadSanitizer' "$log") reports" >&2
    exit 1
fi
[ "$status" -eq 0 ] || { tail -40 "$log"; exit "$status"; }
echo "ThreadSanitizer: no reports"
