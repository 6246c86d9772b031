#!/usr/bin/env bash
# Perplexity of stories260K: full precision, RTN and GPTQ at 4 and 3 bits
# (group 32, asymmetric; GPTQ with act-order), each quantized model saved to
# disk (GPTQ as an AutoGPTQ v1 checkpoint and, from the same results, as a
# compressed-tensors one; RTN as float16 dequantized weights) and evaluated by
# `qforge eval` from what was written. Prints the commands it
# runs and a Markdown table; the README's table is this script's output.
#
# usage: tools/bench/gptq_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

ppl() {  # ppl MODEL_DIR -> prints the perplexity of tinystories_valid.txt (windows of 512)
  echo "+ $Q eval --model $1 --ppl $D/tinystories_valid.txt --json" >&2
  "$Q" eval --model "$1" --ppl "$D/tinystories_valid.txt" --json 2>/dev/null |
    python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["perplexity"]["ppl"])'
}
quantize() {  # quantize OUT ARGS...
  local out="$1"; shift
  echo "+ $Q quantize --model $M ${calib[*]} --out $out $*" >&2
  "$Q" quantize --model "$M" "${calib[@]}" --out "$out" "$@" > /dev/null 2>&1
}

fp=$(ppl "$M")
rows=()
for bits in 4 3; do
  quantize "$work/rtn$bits" --method org.qforge.rtn --set bits=$bits --set group_size=32 --set sym=false
  rtn=$(ppl "$work/rtn$bits")
  quantize "$work/gptq$bits" --method org.qforge.gptq --set bits=$bits --set group_size=32 \
    --set sym=false --set desc_act=true --save-format gptq
  gptq=$(ppl "$work/gptq$bits")
  echo "+ $Q quantize --model $M --from-results $work/gptq$bits/quant_results.safetensors --out $work/ct$bits --save-format compressed-tensors" >&2
  "$Q" quantize --model "$M" --from-results "$work/gptq$bits/quant_results.safetensors" \
    --out "$work/ct$bits" --save-format compressed-tensors > /dev/null 2>&1
  ct=$(ppl "$work/ct$bits")
  rows+=("| $bits-bit, group 32, asymmetric | $fp | $rtn | $gptq | $ct |")
done
echo
echo "| setting | FP | RTN | GPTQ (act-order), gptq v1 | same, compressed-tensors |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
