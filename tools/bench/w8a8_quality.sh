#!/usr/bin/env bash
# W8A8 on stories260K: llm-compressor's schemes by name (--scheme), INT8 with
# and without SmoothQuant (org.qforge.smoothquant, α 0.5 and 0.8; round to
# nearest and GPTQ weights), static INT8 activations, FP8 static and dynamic
# (and qforge's GPTQ / QEP variants of FP8_DYNAMIC), W8A16 and W4A16. Each row
# is one `qforge quantize` writing compressed-tensors (the scheme's default
# format: int-quantized, float-quantized, pack-quantized), then `qforge eval`
# of the checkpoint read back from disk, whose W8A8 / FP8 layers quantize
# their activations at run time: perplexity of tinystories_valid.txt (windows
# of 512), story_choices.jsonl accuracy, the perplexity's distance from FP,
# and the quantize command's wall-clock seconds. Prints the commands and a
# Markdown table.
#
# usage: tools/bench/w8a8_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

fp=$(ppl "$M")
sq=(--preprocess org.qforge.smoothquant --pre-set)
echo "| scheme | ppl | acc | vs FP | s |"
echo "|---|---|---|---|---|"
echo "| FP (float32) | $fp | $(acc "$M") | — | — |"
quality_row "W8A8 (INT8, RTN weights, dynamic per-token activations)" --scheme W8A8
quality_row "W8A8 + SmoothQuant α 0.5" --scheme W8A8 "${sq[@]}" alpha=0.5
quality_row "W8A8 + SmoothQuant α 0.8" --scheme W8A8 "${sq[@]}" alpha=0.8
quality_row "W8A8 + SmoothQuant α 0.5, GPTQ weights" --scheme W8A8 "${sq[@]}" alpha=0.5 --set weights=gptq
quality_row "W8A8 + SmoothQuant α 0.8, GPTQ weights (llm-compressor's W8A8 example)" --scheme W8A8 "${sq[@]}" alpha=0.8 --set weights=gptq
quality_row "W8A8, static per-tensor activations" --scheme W8A8 --set activations=static
quality_row "W8A8 + SmoothQuant α 0.5, static activations" --scheme W8A8 "${sq[@]}" alpha=0.5 --set activations=static
quality_row "FP8 (per-tensor weights, static activations)" --scheme FP8
quality_row "FP8_DYNAMIC (per-channel weights, dynamic per-token activations)" --scheme FP8_DYNAMIC
quality_row "FP8_DYNAMIC, GPTQ weights" --scheme FP8_DYNAMIC --set weights=gptq
quality_row "FP8_DYNAMIC, GPTQ weights + QEP" --scheme FP8_DYNAMIC --set weights=gptq --qep
quality_row "W8A16 (INT8 g128, RTN)" --scheme W8A16
quality_row "W4A16 (INT4 g128 sym, RTN)" --scheme W4A16
quality_row "W4A16 (INT4 g128 sym, GPTQ actorder static)" --scheme W4A16 --method org.qforge.gptq
