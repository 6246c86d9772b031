#!/usr/bin/env bash
# A quantizer gets exactly the inputs it declares (sdk/include/qforge/component.h,
# QFORGE_FEATURE_*): the probe plugin that asks for the quantized- and
# full-precision-stream inputs and the activation statistics receives them,
# right (checked inside the plugin against the Hessian the host also passes);
# the one that asks for none receives none. A calibration-free method runs
# without --calib and writes the same weights as with it; a method that needs
# calibration is refused without it.
# usage: inputs_test.sh <qforge binary> <shared dir> <dir of the test plugins' folders>
set -uo pipefail
qforge="$1" shared="$2" plugins="$3"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
B=(--calib "$C" --nsamples 4 --seqlen 64)

for variant in all none; do
  "$qforge" --plugin-dir "$plugins/inputs_$variant" quantize --model "$M" \
    --method "org.qforge.test.inputs-$variant" "${B[@]}" --out "$work/$variant" --json \
    > "$work/$variant.json" 2> "$work/err"
  check "the inputs-$variant probe runs" '[ -s "$work/$variant.json" ]'
done
python3 - "$work/all.json" "$work/none.json" <<'PY' || fail=1
import json, sys
def layers(p): return {l["name"]: l["metrics"] for l in json.load(open(p))["layers"]}
ask, none = layers(sys.argv[1]), layers(sys.argv[2])
ok = True
def expect(cond, what):
    global ok
    print(("ok:   " if cond else "FAIL: ") + what); ok = ok and cond
expect(len(ask) == 35 and len(none) == 35, "35 layers each")
expect(all(m["plugin.has_inputs_q"] == 1 and m["plugin.has_inputs_fp"] == 1 and
           m["plugin.has_act_stats"] == 1 and m["plugin.rows_match"] == 1 for m in ask.values()),
       "a quantizer asking for both streams and the statistics gets them, n rows each")
expect(max(m["plugin.hessian_error"] for m in ask.values()) < 1e-4,
       "inputs_q is the stream behind the Hessian (2/n XᵀX agrees)")
expect(max(m["plugin.act_stats_error"] for m in ask.values()) < 1e-5,
       "act_stats is mean |x| per channel of inputs_q")
first = ask["model.layers.0.self_attn.q_proj"]["plugin.stream_difference"]
later = ask["model.layers.1.self_attn.q_proj"]["plugin.stream_difference"]
expect(first == 0, "block 0's first inputs are the same in both streams")
# The probe rounds each weight, so later inputs differ between the original
# model's stream and the quantized model's.
expect(later > 0, "later inputs_fp come from the full-precision model, not the quantized one")
expect(all(m["plugin.has_inputs_q"] == 0 and m["plugin.has_inputs_fp"] == 0 and
           m["plugin.has_act_stats"] == 0 and m["plugin.has_hessian"] == 1 for m in none.values()),
       "a quantizer asking for none of them gets only the Hessian")
sys.exit(0 if ok else 1)
PY

# Calibration-free: RTN without --calib writes the weights it writes with it.
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=3 --out "$work/free" \
  > "$work/free.out" 2> "$work/err"; rc=$?
check "RTN (calibration-free) runs without --calib (exit $rc)" \
  '[ $rc -eq 0 ] && grep -q "calibration: none" "$work/free.out"'
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=3 "${B[@]}" --out "$work/cal" \
  > /dev/null 2> "$work/err"
same=1
for f in "$work"/cal/model-block-*.safetensors; do cmp -s "$f" "$work/free/$(basename "$f")" || same=0; done
check "... and writes the same weights as with calibration" '[ $same -eq 1 ]'
"$qforge" quantize --model "$M" --method org.qforge.gptq --out "$work/gptq" > /dev/null 2> "$work/err"; rc=$?
check "GPTQ without --calib is refused (exit $rc)" \
  '[ $rc -eq 2 ] && grep -q "calib FILE is required: org.qforge.gptq is not calibration-free" "$work/err"'
exit $fail
