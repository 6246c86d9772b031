#!/usr/bin/env bash
# One command for a fresh Debian machine: install, build, run the main job.
# The main job is the one most users come for: GPTQ 4-bit (group 128,
# symmetric, act-order) through the block-sequential pipeline, saved as a
# compressed-tensors pack-quantized checkpoint (the format vLLM and
# transformers load), then read back and evaluated: the perplexity of the
# original model (cached between runs) and of the checkpoint as written, run
# packed. Model: $QFORGE_MODEL, else
# ../shared/models/stories260K. Calibration text: $QFORGE_CALIB, else
# ../shared/data/tinystories_v2_calib.txt; evaluation text: $QFORGE_EVAL,
# else ../shared/data/tinystories_valid.txt (a different split). Without a
# model, a tiny Llama with random weights that qforge writes (and says so).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${QFORGE_SHARED:-$root/../shared}"
bash "$root/tools/setup.sh"
bash "$root/tools/build.sh"
build="${QFORGE_BUILD:-$root/build}"
qforge="$build/bin/qforge"
model="${QFORGE_MODEL:-$shared/models/stories260K}"
calib="${QFORGE_CALIB:-$shared/data/tinystories_v2_calib.txt}"
eval_text="${QFORGE_EVAL:-$shared/data/tinystories_valid.txt}"
calib_format=auto
if [ ! -f "$model/config.json" ]; then
  # No model at hand: qforge writes a tiny Llama with RANDOM weights and a
  # byte-level tokenizer, and calibrates/evaluates on text from this repository.
  model="$build/random-tiny-llama"
  echo "quickstart: no model at ${QFORGE_MODEL:-$shared/models/stories260K}; using a tiny Llama with RANDOM weights ($model)"
  [ -f "$model/config.json" ] || "$build/bin/qforge_bench_forward" --synthetic tiny --keep "$model" --write-only
  [ -f "$calib" ] || { calib="$root/README.md"; calib_format=text; }
  [ -f "$eval_text" ] || eval_text="$root/host/src/pipeline/pipeline.cpp"
fi
"$qforge" plugins
out="$build/quickstart-out"
rm -rf "$out"
"$qforge" quantize --model "$model" --method org.qforge.gptq \
  --set bits=4 --set group_size=128 --set sym=true --set desc_act=true \
  --calib "$calib" --calib-format "$calib_format" --nsamples 128 --seqlen 256 \
  --save-format compressed-tensors --out "$out" --eval "$eval_text"
echo "quickstart: $out is a compressed-tensors checkpoint (vllm serve $out / transformers load it)"
