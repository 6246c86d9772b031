#!/usr/bin/env bash
# Reconstruction on stories260K: each method's quantize command alone and
# with the reconstruction post-processes (their defaults) — block-wise
# (org.qforge.blockwise, in the pipeline) with and without code tuning, with
# and without CBQ's two-block windows afterwards (org.qforge.cbq), GlobalPTQ
# (org.qforge.globalptq) alone and after block-wise with codes. Every figure
# by `qforge eval` from the checkpoint written to disk: perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy, and
# the wall-clock seconds of the quantize command. Prints the commands and a
# Markdown table.
#
# usage: tools/bench/blockwise_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

run() {  # run ARGS...: quantize into $work/q, print "ppl | acc | seconds"
  echo "+ $Q quantize --model $M ${calib[*]} $* --out OUT" >&2
  local t0=$SECONDS
  "$Q" quantize --model "$M" "${calib[@]}" "$@" --out "$work/q" > /dev/null 2>&1
  local secs=$((SECONDS - t0))
  echo "$(ppl "$work/q") | $(acc "$work/q") | $secs"
  rm -rf "$work/q"
}
bw=(--postprocess org.qforge.blockwise)
codes=(--pp-set codes=true)
cbq=(--postprocess org.qforge.cbq)
global=(--postprocess org.qforge.globalptq)
method() {  # method LABEL ARGS...: one row per setting
  local label="$1"; shift
  echo "| $label | — | $(run "$@") |"
  echo "| | block-wise | $(run "$@" "${bw[@]}") |"
  echo "| | block-wise, codes | $(run "$@" "${bw[@]}" "${codes[@]}") |"
  echo "| | block-wise + CBQ | $(run "$@" "${bw[@]}" "${cbq[@]}") |"
  echo "| | block-wise + CBQ, codes | $(run "$@" "${bw[@]}" "${codes[@]}" "${cbq[@]}" "${codes[@]}") |"
  echo "| | GlobalPTQ | $(run "$@" "${global[@]}") |"
  echo "| | block-wise, codes + GlobalPTQ | $(run "$@" "${bw[@]}" "${codes[@]}" "${global[@]}") |"
}
echo "| model | reconstruction | ppl | acc | s |"
echo "|---|---|---|---|---|"
g32=(--set group_size=32 --set sym=false --set desc_act=true)
method "GPTQ 3-bit g32 asym act-order" --method org.qforge.gptq --set bits=3 "${g32[@]}" --save-format gptq
method "GPTQ 2-bit g32 asym act-order, mse" --method org.qforge.gptq --set bits=2 "${g32[@]}" --set mse=true --save-format gptq
method "RTN 3-bit g32 asym" --method org.qforge.rtn --set bits=3 --set group_size=32 --set sym=false --save-format qforge
method "QuIP 2-bit g32" --method org.qforge.quip --set bits=2 --set group_size=32 --save-format quip
method "DBF data-aware, target_bits 1.5" --method org.qforge.dbf --set target_bits=1.5 --save-format dbf
