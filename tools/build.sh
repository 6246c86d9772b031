#!/usr/bin/env bash
# Configures and builds qforge (Release) into ${QFORGE_BUILD:-build}.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${QFORGE_BUILD:-$root/build}"
jobs="${QFORGE_JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "$@"
cmake --build "$build" -j "$jobs"
