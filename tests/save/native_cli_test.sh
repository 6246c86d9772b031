#!/usr/bin/env bash
# --save-format qforge from the command line, on stories260K:
#  - RTN 4-bit g32 and GPTQ: `quantize --eval` measures the written
#    checkpoint run packed (so not the in-memory packed model again), and
#    `qforge eval --model OUT` gives the written figure exactly; that the
#    packed layers round-trip bit for bit (logits equal the in-memory packed
#    model's exactly) is native_test's job;
#  - a third-party format (org.example.sign/1 from tests/save/third_party,
#    loaded with --plugin-dir) saved and read back through its own inference
#    layer alike; without that plugin its checkpoint is refused (exit 2, one
#    line naming the format);
#  - tampered quantization_configs (a missing tensor, a wrong type, a layer
#    the model does not have) exit 2 with a one-line message.
# usage: native_cli_test.sh <qforge binary> <shared dir> <sign plugin dir>
set -uo pipefail
qforge="$1" shared="$2" sign="$3"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
head -c 60000 "$shared/data/tinystories_valid.txt" > "$work/eval.txt"
export QFORGE_CACHE="$work/cache"

# field <json file> <key>: perplexity[key] as Python's repr (every digit), or "".
field() {
  python3 -c 'import json, sys
p = json.load(open(sys.argv[1])).get("perplexity", {})
v = p.get(sys.argv[2])
print(repr(v) if isinstance(v, float) else "")' "$1" "$2" 2> /dev/null
}
# round_trip <name> <global options> -- <quantize options>: quantize into
# $work/<name> with --eval, then `qforge eval` the checkpoint.
round_trip() {
  local name="$1"; shift
  local global=()
  while [ "$1" != "--" ]; do global+=("$1"); shift; done; shift
  "$qforge" "${global[@]}" quantize --model "$M" --calib "$C" --nsamples 16 --seqlen 128 \
    --save-format qforge --eval "$work/eval.txt" --eval-seqlen 256 --out "$work/$name" --json \
    "$@" > "$work/$name.json" 2> "$work/err"
  local rc=$?
  check "$name: quantize --save-format qforge exits 0" '[ "$rc" -eq 0 ]'
  "$qforge" "${global[@]}" eval --model "$work/$name" --ppl "$work/eval.txt" --seqlen 256 --json \
    > "$work/$name.eval.json" 2> "$work/err"
  local written packed evaluated
  written=$(field "$work/$name.json" qforge) packed=$(field "$work/$name.json" packed)
  evaluated=$(python3 -c 'import json, sys; print(repr(json.load(open(sys.argv[1]))["perplexity"]["ppl"]))' \
    "$work/$name.eval.json" 2> /dev/null)
  echo "$name: original $(field "$work/$name.json" original), packed $packed, written $written, eval $evaluated"
  check "$name: the written checkpoint is measured, run packed (the in-memory packed model is not measured again)" \
    '[ -n "$written" ] && [ -z "$packed" ]'
  check "$name: qforge eval gives the written checkpoint's figure exactly" \
    '[ -n "$evaluated" ] && [ "$evaluated" = "$written" ]'
  check "$name: config.json says quant_method qforge" \
    'grep -q "\"quant_method\": \"qforge\"" "$work/$name/config.json"'
}

round_trip rtn -- --method org.qforge.rtn --set bits=4 --set group_size=32
round_trip gptq -- --method org.qforge.gptq --set bits=4 --set group_size=32 --set desc_act=true
"$qforge" generate --model "$work/rtn" --prompt "Once upon a time" --max-new-tokens 8 \
  > /dev/null 2> "$work/err"
rc=$?
check "generate runs the rtn checkpoint" '[ "$rc" -eq 0 ]'

# The third-party format, through its own plugin only.
round_trip sign --plugin-dir "$sign" -- --method org.example.sign
check "sign: its layers are in org.example.sign/1" \
  'grep -q "\"format\": \"org.example.sign/1\"" "$work/sign/config.json"'
"$qforge" eval --model "$work/sign" --ppl "$work/eval.txt" --seqlen 256 > /dev/null 2> "$work/err"
rc=$?
echo "without the plugin: exit $rc: $(cat "$work/err")"
check "sign: without its plugin the checkpoint is refused (exit 2)" '[ "$rc" -eq 2 ]'
check "... in one line naming the format and a layer" \
  '[ "$(wc -l < "$work/err")" -eq 1 ] && grep -q "org.example.sign/1" "$work/err" && grep -q "model.layers.0" "$work/err"'

# Tampered quantization_configs: exit 2, one line.
tamper() {  # tamper <description> <python statement on q, the quantization_config> <expected text>
  rm -rf "$work/t" && cp -r "$work/rtn" "$work/t"
  python3 - "$work/t/config.json" "$2" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
q = c["quantization_config"]
up = q["layers"]["model.layers.1.mlp.up_proj"]
exec(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
  "$qforge" eval --model "$work/t" --ppl "$work/eval.txt" --seqlen 256 > /dev/null 2> "$work/err"
  local rc=$? want="$3"
  echo "$1: exit $rc: $(cat "$work/err")"
  check "$1: exit 2" '[ "$rc" -eq 2 ]'
  check "$1: one line naming '$want'" '[ "$(wc -l < "$work/err")" -eq 1 ] && grep -qF -- "$want" "$work/err"'
}
tamper "a listed tensor that is missing" 'up["tensors"].append("codes")' "model.layers.1.mlp.up_proj.codes"
tamper "a tensor left out of the list" 'up["tensors"].remove("scales")' "model.layers.1.mlp.up_proj"
tamper "a format id that is not a string" 'up["format"] = 4' '"format" must be'
tamper "metadata that is not an object" 'up["metadata"] = "bits=4"' '"metadata" must be a JSON object'
tamper "tensors that are not a list" 'up["tensors"] = "qweight"' '"tensors" must be'
tamper "a layer the model does not have" 'q["layers"]["model.layers.9.mlp.up_proj"] = up' "model.layers.9.mlp.up_proj"
tamper "a format no plugin reads" 'up["format"] = "org.nowhere/1"' "org.nowhere/1"
exit $fail
