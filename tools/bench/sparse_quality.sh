#!/usr/bin/env bash
# Pruning on stories260K: magnitude 2:4 (the baseline), SparseGPT 2:4,
# SparseGPT 2:4 with 4-bit g32 weights (symmetric and asymmetric) and with
# FP8 weights, SparseGPT and magnitude 50 % unstructured, and GPTQ 4-bit g32
# dense for reference. Each row is one `qforge quantize` (the calibration of
# every quality table: stories_env.sh) saved to disk — pruned float weights
# as compressed-tensors (dense, with sparsity_config), 4-bit as an AutoGPTQ
# v1 checkpoint, FP8 as compressed-tensors float-quantized — then
# `qforge eval` of the checkpoint read back: perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy, the
# perplexity's distance from FP, and the quantize command's wall-clock
# seconds. Prints the commands and a Markdown table.
#
# usage: tools/bench/sparse_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

fp=$(ppl "$M")
show_args=1
sg=(--method org.qforge.sparsegpt)
ct=(--save-format compressed-tensors)
echo "| method | ppl | acc | vs FP | s | arguments |"
echo "|---|---|---|---|---|---|"
echo "| FP (float32) | $fp | $(acc "$M") | — | — | |"
quality_row "magnitude 2:4" --method org.qforge.magnitude "${ct[@]}"
quality_row "SparseGPT 2:4" "${sg[@]}" "${ct[@]}"
quality_row "SparseGPT 2:4 + 4-bit g32 sym" "${sg[@]}" --set weights=int --set bits=4 --set group_size=32 \
  --set sym=true --save-format gptq
quality_row "SparseGPT 2:4 + 4-bit g32 asym" "${sg[@]}" --set weights=int --set bits=4 --set group_size=32 \
  --set sym=false --save-format gptq
quality_row "SparseGPT 2:4 + FP8 (dynamic per-token activations)" "${sg[@]}" --set weights=fp8 "${ct[@]}"
quality_row "magnitude 50 % unstructured" --method org.qforge.magnitude --set mask=unstructured \
  --set sparsity=0.5 "${ct[@]}"
quality_row "SparseGPT 50 % unstructured" "${sg[@]}" --set mask=unstructured --set sparsity=0.5 "${ct[@]}"
quality_row "GPTQ 4-bit g32 asym, dense (reference)" --method org.qforge.gptq --set bits=4 \
  --set group_size=32 --set sym=false --save-format gptq
