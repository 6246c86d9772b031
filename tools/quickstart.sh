#!/usr/bin/env bash
# One command for a fresh Debian machine: install, build, run the main job.
# The main job quantizes a real model with RTN (4-bit, group 32) through the
# block-sequential pipeline and prints the perplexity of the original,
# dequantized and packed models. Model: $QFORGE_MODEL, else
# ../shared/models/stories260K. Calibration text: $QFORGE_CALIB, else
# ../shared/data/tinystories_v2_calib.txt; evaluation text: $QFORGE_EVAL,
# else ../shared/data/tinystories_valid.txt (a different split).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${QFORGE_SHARED:-$root/../shared}"
bash "$root/tools/setup.sh"
bash "$root/tools/build.sh"
build="${QFORGE_BUILD:-$root/build}"
qforge="$build/bin/qforge"
model="${QFORGE_MODEL:-$shared/models/stories260K}"
if [ ! -f "$model/config.json" ]; then
  echo "quickstart: no model at $model (set QFORGE_MODEL to a Hugging Face directory);"
  echo "quickstart: running RTN on one random 4096x4096 matrix instead"
  "$qforge" quantize-layer --method org.qforge.rtn --set bits=4 --set group_size=128
  exit 0
fi
"$qforge" plugins
out="$build/quickstart-out"
rm -rf "$out"
"$qforge" quantize --model "$model" --method org.qforge.rtn --set bits=4 --set group_size=32 \
  --calib "${QFORGE_CALIB:-$shared/data/tinystories_v2_calib.txt}" --nsamples 32 --seqlen 256 \
  --out "$out" --eval "${QFORGE_EVAL:-$shared/data/tinystories_valid.txt}"
