#!/usr/bin/env bash
# Every test: the unit and parity tests, the README's library example built as an app would build
# it, and the concurrency tests under ThreadSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
OMP_WAIT_POLICY=passive swift test --disable-swift-testing
bash Scripts/check-readme-snippet.sh
bash Scripts/check-concurrency.sh
