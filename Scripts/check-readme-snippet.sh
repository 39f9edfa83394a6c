#!/usr/bin/env bash
# Builds and runs the README's library example as an app would: a new package whose Package.swift
# is the README's, depending on this repository by path, in Swift 6 language mode, with the
# README's Swift block as its main.swift, run from the repository root. Any difference between the
# README and the public API fails here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ln -s "$root" "$work/swift-cvt"   # the README's `.package(path: "../swift-cvt")`
mkdir -p "$work/App/Sources/App"
# The first two ```swift blocks of the "## Library" section: Package.swift, then the program.
awk -v out="$work/App" '
    /^## Library/ { inside = 1; next }
    inside && /^## / { exit }
    inside && /^```swift/ { block++; copying = 1; next }
    copying && /^```/ { copying = 0; next }
    copying && block == 1 { print > (out "/Package.swift") }
    copying && block == 2 { print > (out "/Sources/App/main.swift") }
' "$root/README.md"
test -s "$work/App/Package.swift" && test -s "$work/App/Sources/App/main.swift" || { echo "README: no Library snippets found" >&2; exit 1; }
swift build --package-path "$work/App" 2>&1 | grep -E 'error|Compiling|Build' | grep -v '^\[' || true
test -x "$work/App/.build/debug/App" || { echo "README snippet: the example package did not build" >&2; exit 1; }
# The CLI's and the server's dependencies are resolved but must not be compiled for CvtKit users.
if ls "$work/App/.build/debug/Modules" | grep -qE '^(ArgumentParser|Hummingbird|NIO|Prometheus|ServiceLifecycle)'; then
    echo "README snippet: the CLI's or server's dependencies were compiled for a library user:" >&2
    ls "$work/App/.build/debug/Modules" | grep -E '^(ArgumentParser|Hummingbird|NIO|Prometheus|ServiceLifecycle)' | head >&2
    exit 1
fi
cd "$root"
OMP_WAIT_POLICY=passive "$work/App/.build/debug/App"
echo "README snippet: built and ran"
