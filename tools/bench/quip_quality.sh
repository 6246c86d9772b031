#!/usr/bin/env bash
# QuIP on stories260K: org.qforge.quip at 2, 3 and 4 bits (min/max grids per
# group of 32, with and without greedy passes, and the paper's per-tensor
# grid), beside GPTQ 2-bit and 3-bit g32 (asymmetric, act-order; min/max and
# with the MSE clipping search). Effective bits count every stored tensor of
# the quantized linears (codes, float16 scales and zero points, the rescaling
# vector, signs and any stored base; GPTQ: b + (16 + b)/32). Every figure by
# `qforge eval` from the checkpoint written to disk (QuIP in qforge's own
# packed layout, run packed through the transforms): perplexity of
# tinystories_valid.txt (windows of 512), story_choices.jsonl accuracy.
# Prints the commands and a Markdown table.
#
# usage: tools/bench/quip_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

# Bits per weight of every tensor of the layers that hold sign_v (QuIP's), from the headers.
stored_bits() {
  python3 - "$1" <<'PY'
import json, os, struct, sys
sizes = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I8": 1, "U8": 1, "I64": 8}
layers, total = {}, 0
for f in sorted(os.listdir(sys.argv[1])):
    if not f.endswith(".safetensors"): continue
    with open(os.path.join(sys.argv[1], f), "rb") as fh:
        n = struct.unpack("<Q", fh.read(8))[0]
        h = json.loads(fh.read(n))
    for name, t in h.items():
        if name == "__metadata__": continue
        layer, _, tensor = name.rpartition(".")
        numel = 1
        for d in t["shape"]: numel *= d
        layers.setdefault(layer, {})[tensor] = (t["shape"], numel * sizes[t["dtype"]])
weights = bits = 0
for layer, ts in layers.items():
    if "sign_v" not in ts: continue
    weights += ts["qweight"][0][0] * ts["sign_v"][0][0]  # out x in
    bits += 8 * sum(b for tensor, (shape, b) in ts.items() if tensor != "bias")
print("%.3f" % (bits / weights))
PY
}
row() {  # row LABEL BITS ARGS...: quantize, then print the row
  local label="$1" bits="$2"; shift 2
  echo "+ $Q quantize --model $M ${calib[*]} $* --out OUT" >&2
  "$Q" quantize --model "$M" "${calib[@]}" "$@" --out "$work/q" > /dev/null 2>&1
  [ "$bits" = "stored" ] && bits=$(stored_bits "$work/q")
  echo "| $label | $bits | $(ppl "$work/q") | $(acc "$work/q") |"
  rm -rf "$work/q"
}
echo "| model | effective bits | perplexity | story_choices acc |"
echo "|---|---|---|---|"
for b in 2 3 4; do
  row "QuIP $b-bit g32" stored --method org.qforge.quip --set bits=$b --set group_size=32 --save-format quip
done
row "QuIP 2-bit g32, 2 greedy passes" stored --method org.qforge.quip --set bits=2 --set group_size=32 --set greedy_passes=2 --save-format quip
row "QuIP 2-bit g32 mse" stored --method org.qforge.quip --set bits=2 --set group_size=32 --set mse=true --save-format quip
row "QuIP 2-bit per tensor, U and V (paper, OneComp)" stored --method org.qforge.quip --set bits=2 --set scale=tensor --save-format quip
row "QuIP 2-bit g32, --qep" stored --method org.qforge.quip --set bits=2 --set group_size=32 --qep --save-format quip
gptq_baselines
