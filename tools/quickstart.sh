#!/usr/bin/env bash
# One command for a fresh Debian machine: install, build, run the main job.
# Until the model runtime lands, the main job quantizes one 4096x4096 random
# weight matrix with RTN (4-bit, group 128) and checks the packed layer.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/tools/setup.sh"
bash "$root/tools/build.sh"
qforge="${QFORGE_BUILD:-$root/build}/bin/qforge"
"$qforge" plugins
"$qforge" quantize-layer --method org.qforge.rtn --set bits=4 --set group_size=128
