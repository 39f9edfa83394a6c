#!/usr/bin/env bash
# Every test: the unit and parity tests, the README's library example built as an app would build
# it, the concurrency tests under ThreadSanitizer, and the parsers' fuzz harnesses (their seed
# corpora replayed, then 10 s of fuzzing each).
set -euo pipefail
cd "$(dirname "$0")/.."
OMP_WAIT_POLICY=passive swift test --disable-swift-testing
bash Scripts/check-readme-snippet.sh
bash Scripts/check-concurrency.sh
bash Scripts/fuzz.sh replay
bash Scripts/fuzz.sh run 10
