#!/usr/bin/env bash
# AWQ on stories260K: round-to-nearest, AWQ (org.qforge.awq, a pre-process)
# then round-to-nearest, GPTQ, and AWQ then GPTQ, at 4 and 3 bits, groups of
# 32, asymmetric (GPTQ with and without act-order). Each row is one `qforge quantize` (RTN rows written as
# compressed-tensors pack-quantized, GPTQ rows as AutoGPTQ v1), then
# `qforge eval` of the checkpoint read back from disk: perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy, the
# perplexity's distance from FP, and the quantize command's wall-clock
# seconds. AWQ's grid (bits, group_size, sym) is the quantizer's --set values.
# Prints the commands and a Markdown table.
#
# usage: tools/bench/awq_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

fp=$(ppl "$M")
awq=(--preprocess org.qforge.awq)
echo "| method | ppl | acc | vs FP | s |"
echo "|---|---|---|---|---|"
echo "| FP (float32) | $fp | $(acc "$M") | — | — |"
for b in 4 3; do
  grid=(--set bits=$b --set group_size=32 --set sym=false)
  quality_row "RTN $b-bit g32" --method org.qforge.rtn "${grid[@]}" --save-format compressed-tensors
  quality_row "AWQ + RTN $b-bit g32" "${awq[@]}" --method org.qforge.rtn "${grid[@]}" --save-format compressed-tensors
  quality_row "GPTQ $b-bit g32" --method org.qforge.gptq "${grid[@]}" --save-format gptq
  quality_row "AWQ + GPTQ $b-bit g32" "${awq[@]}" --method org.qforge.gptq "${grid[@]}" --save-format gptq
  quality_row "GPTQ $b-bit g32 act-order" --method org.qforge.gptq "${grid[@]}" --set desc_act=true --save-format gptq
  quality_row "AWQ + GPTQ $b-bit g32 act-order" "${awq[@]}" --method org.qforge.gptq "${grid[@]}" --set desc_act=true --save-format gptq
done
