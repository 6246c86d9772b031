#!/usr/bin/env bash
# Block-wise reconstruction on stories260K: each method's command with and
# without `--postprocess org.qforge.blockwise` (its defaults). Every figure by
# `qforge eval` from the checkpoint written to disk: perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy, and
# the wall-clock seconds of the quantize command. Prints the commands and a
# Markdown table.
#
# usage: tools/bench/blockwise_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

ppl() { "$Q" eval --model "$1" --ppl "$D/tinystories_valid.txt" --json 2>/dev/null | field '["perplexity"]["ppl"]'; }
acc() { "$Q" eval --model "$1" --choices "$D/story_choices.jsonl" --json 2>/dev/null | field '["choices"]["acc"]'; }
run() {  # run ARGS...: quantize into $work/q, print "ppl | acc | seconds"
  echo "+ $Q quantize --model $M ${calib[*]} $* --out OUT" >&2
  local t0=$SECONDS
  "$Q" quantize --model "$M" "${calib[@]}" "$@" --out "$work/q" > /dev/null 2>&1
  local secs=$((SECONDS - t0))
  echo "$(ppl "$work/q") | $(acc "$work/q") | $secs"
  rm -rf "$work/q"
}
row() {  # row LABEL ARGS...
  local label="$1"; shift
  echo "| $label | $(run "$@") | $(run "$@" --postprocess org.qforge.blockwise) |"
}
echo "| model | ppl | acc | s | ppl + blockwise | acc + blockwise | s + blockwise |"
echo "|---|---|---|---|---|---|---|"
g32=(--set group_size=32 --set sym=false --set desc_act=true)
row "GPTQ 3-bit g32 asym act-order" --method org.qforge.gptq --set bits=3 "${g32[@]}" --save-format gptq
row "GPTQ 2-bit g32 asym act-order, mse" --method org.qforge.gptq --set bits=2 "${g32[@]}" --set mse=true --save-format gptq
row "RTN 3-bit g32 asym" --method org.qforge.rtn --set bits=3 --set group_size=32 --set sym=false --save-format dequantized
row "QuIP 2-bit g32" --method org.qforge.quip --set bits=2 --set group_size=32 --save-format quip
row "DBF data-aware, target_bits 1.5" --method org.qforge.dbf --set target_bits=1.5 --save-format dbf
