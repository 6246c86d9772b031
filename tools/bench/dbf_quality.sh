#!/usr/bin/env bash
# DBF on stories260K: org.qforge.dbf in both modes at 1.0, 1.5 and 2.0
# sign-plane bits per weight, beside GPTQ 2-bit and 3-bit (group 32,
# asymmetric, act-order; min/max grids and with the MSE clipping search).
# Effective bits count every scale (DBF: k(n+m)/(nm) + 16(n+k+m)/(nm), the
# mean over the quantized weights; GPTQ g32: b + (16 + b)/32). Every figure
# by `qforge eval` from the checkpoint written to disk: perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy.
# Prints the commands and a Markdown table.
#
# usage: tools/bench/dbf_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

row() {  # row LABEL BITS ARGS...: quantize, then print the row
  local label="$1" bits="$2"; shift 2
  echo "+ $Q quantize --model $M ${calib[*]} $* --out OUT" >&2
  "$Q" quantize --model "$M" "${calib[@]}" "$@" --out "$work/q" --json 2> /dev/null > "$work/summary.json"
  if [ "$bits" = "dbf" ]; then
    bits=$(python3 -c "import json; L=json.load(open('$work/summary.json'))['layers']; \
w=sum(l['metrics']['plugin.weights'] for l in L); print('%.3f' % (sum(l['metrics']['plugin.effective_bits']*l['metrics']['plugin.weights'] for l in L)/w))")
  fi
  echo "| $label | $bits | $(ppl "$work/q") | $(acc "$work/q") |"
  rm -rf "$work/q"
}
echo "| model | effective bits | perplexity | story_choices acc |"
echo "|---|---|---|---|"
for b in 1.0 1.5 2.0; do
  for mode in onecomp data-aware; do
    row "DBF $mode, target_bits $b" dbf --method org.qforge.dbf --set target_bits=$b --set mode=$mode --save-format dbf
  done
done
row "DBF data-aware, target_bits 2.0, --qep" dbf --method org.qforge.dbf --set target_bits=2.0 --qep --save-format dbf
gptq_baselines
