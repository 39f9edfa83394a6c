#!/bin/bash
# In-process A/B timing of two versions of one of our C kernel files (Sources/CKernels/gemm.c or
# layers.c): both are compiled into one program, their exported ck_* symbols renamed, and calls to
# them alternate, so that a shared machine's drift hits both alike.
#
#   Scripts/kernel_ab.sh A B gemm M K N GELU
#   Scripts/kernel_ab.sh A B attention IMAGES HEADS TQ TK CHANNELS
#   Scripts/kernel_ab.sh A B depthwise IMAGES CHANNELS HW STRIDE
#
# A and B: a git revision (its copy of the file) or a path to a C file. Environment: THREADS
# (default 1), REPS (calls per side, default 200), COLD (gemm: weight copies in rotation, default 8),
# CC (default cc). Example: Scripts/kernel_ab.sh HEAD~1 HEAD gemm 394 384 1536 1
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,13p' "$0"; exit 2; fi
root="$(cd "$(dirname "$0")/.." && pwd)"
a="$1"; b="$2"; kind="$3"; shift 3
case "$kind" in
    gemm|attention) file=gemm.c ;;
    depthwise) file=layers.c ;;
    *) echo "unknown kind '$kind' (gemm, attention, depthwise)" >&2; exit 2 ;;
esac
cc="${CC:-cc}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
inc="$root/Sources/CKernels/include"
for side in A B; do
    if [ "$side" = A ]; then version="$a"; else version="$b"; fi
    if [ -f "$version" ]; then cp "$version" "$work/$side.c"
    else git -C "$root" show "$version:Sources/CKernels/$file" > "$work/$side.c"; fi
    "$cc" -O3 -fopenmp -c -I"$inc" "$work/$side.c" -o "$work/$side.raw.o"
    nm "$work/$side.raw.o" | awk -v p="$side" '$2 ~ /^[TBDR]$/ && $3 ~ /^ck_/ { print $3, p "_" $3 }' > "$work/$side.map"
    objcopy --redefine-syms="$work/$side.map" "$work/$side.raw.o" "$work/$side.o"
done
# The working tree's kernels provide the unrenamed symbols the team and the other file use.
"$cc" -O3 -fopenmp -I"$inc" "$root/Scripts/kernel_ab/driver.c" "$work/A.o" "$work/B.o" \
    "$root"/Sources/CKernels/{gemm.c,layers.c,team.c,ckernels.c} -o "$work/ab" -lm -lpthread
"$work/ab" "$kind" "$@"
