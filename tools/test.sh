#!/usr/bin/env bash
# One command for a fresh Debian machine: install, build, run every test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup.sh"
bash "$root/tools/build.sh"
cd "${QFORGE_BUILD:-$root/build}"
# Passive OpenMP waiting: CTest runs tests side by side on few cores (see host/cli/main.cpp).
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
ctest --output-on-failure -j "${QFORGE_JOBS:-$(nproc)}" --timeout 600
