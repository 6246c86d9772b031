#!/usr/bin/env bash
# `qforge quantize` from a JSON recipe on stories260K: RTN through the pipeline
# writes a model, and its perplexity is printed beside the original's (and the
# packed model's). Bad recipes are refused with exit 2.
# usage: quantize_cli_test.sh <qforge binary> <shared dir>
set -uo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
export QFORGE_CACHE="$work/cache"   # the perplexity cache starts empty
# Evaluation text: the head of the V1 validation split (calibration is V2).
head -c 60000 "$shared/data/tinystories_valid.txt" > "$work/eval.txt"
cat > "$work/recipe.json" <<JSON
{
  "model": "$shared/models/stories260K",
  "method": "org.qforge.rtn",
  "set": {"bits": 4, "group_size": 32},
  "override": ["*down_proj:bits=8"],
  "calib": "$shared/data/tinystories_v2_calib.txt",
  "nsamples": 16, "seqlen": 256, "seed": 1,
  "qep": true,
  "postprocess": [],
  "eval": "$work/eval.txt", "eval-seqlen": 256,
  "out": "$work/out"
}
JSON
"$qforge" quantize --recipe "$work/recipe.json" > "$work/stdout" 2> "$work/stderr"
rc=$?
cat "$work/stdout"
[ $rc -eq 0 ] || { echo "FAIL: recipe run exit $rc"; cat "$work/stderr"; fail=1; }
for want in "calibration: 16 " "original" "dequantized" "packed" "model.layers.4.mlp.down_proj"; do
  grep -q -- "$want" "$work/stdout" || { echo "FAIL: no '$want' in the output"; fail=1; }
done
orig=$(awk '/original/ {print $2}' "$work/stdout")
deq=$(awk '/dequantized/ && !/wrote/ {print $2}' "$work/stdout")
awk -v o="$orig" -v d="$deq" 'BEGIN { exit !(o > 1 && d >= o && d < 2 * o) }' ||
  { echo "FAIL: perplexities original=$orig dequantized=$deq are implausible"; fail=1; }
test -f "$work/out/model.safetensors.index.json" || { echo "FAIL: no index written"; fail=1; }
"$qforge" eval --model "$work/out" --ppl "$work/eval.txt" --seqlen 256 > "$work/eval.out" || fail=1
grep -q "perplexity: $deq" "$work/eval.out" || { echo "FAIL: eval of the written model disagrees:"; cat "$work/eval.out"; fail=1; }

# GPTQ into an AutoGPTQ v1 checkpoint: the written checkpoint (read back packed)
# and the in-memory packed layers give the same perplexity, and `qforge eval`
# and `generate` run it.
"$qforge" quantize --model "$shared/models/stories260K" --method org.qforge.gptq --set bits=4 \
  --set group_size=32 --set desc_act=true --set sym=false --save-format gptq \
  --calib "$shared/data/tinystories_v2_calib.txt" --nsamples 16 --seqlen 256 \
  --eval "$work/eval.txt" --eval-seqlen 256 --out "$work/gptq" > "$work/gptq.out" 2> "$work/gptq.err" ||
  { echo "FAIL: gptq run"; cat "$work/gptq.err"; fail=1; }
cat "$work/gptq.out"
g=$(awk '$1 == "gptq" {print $2}' "$work/gptq.out")
[ -n "$g" ] && grep -q "the written checkpoint, run packed" "$work/gptq.out" ||
  { echo "FAIL: the gptq checkpoint was not read back packed"; fail=1; }
# The original model's perplexity is not measured again for the same model and text.
grep -q "measured before for this model and text" "$work/gptq.out" ||
  { echo "FAIL: the original perplexity was measured again"; fail=1; }
grep -q '"quant_method": "gptq"' "$work/gptq/config.json" || { echo "FAIL: no quantization_config"; fail=1; }
test -f "$work/gptq/quantize_config.json" || { echo "FAIL: no quantize_config.json"; fail=1; }
"$qforge" eval --model "$work/gptq" --ppl "$work/eval.txt" --seqlen 256 > "$work/geval.out" || fail=1
grep -q "perplexity: $g" "$work/geval.out" || { echo "FAIL: eval of the gptq checkpoint:"; cat "$work/geval.out"; fail=1; }
"$qforge" generate --model "$work/gptq" --prompt "Once upon a time" --max-new-tokens 8 > /dev/null ||
  { echo "FAIL: generate from the gptq checkpoint"; fail=1; }

bad() {  # bad <description> <json>
  echo "$2" > "$work/bad.json"
  "$qforge" quantize --recipe "$work/bad.json" > /dev/null 2> "$work/err"
  local rc=$?
  if [ $rc -ne 2 ]; then echo "FAIL: $1: exit $rc, expected 2"; cat "$work/err"; fail=1; else echo "ok:   $1: $(cat "$work/err")"; fi
}
bad "unknown key" '{"modle": "x"}'
bad "not an object" '[1, 2]'
bad "post-process that does not exist" '{"postprocess": ["lora"]}'
bad "bad parameter" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.rtn\", \"set\": {\"bits\": 9}, \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"out\": \"$work/o2\"}"
bad "existing output" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.rtn\", \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"nsamples\": 2, \"seqlen\": 64, \"out\": \"$work/out\"}"
bad "gptq checkpoint from a method that cannot write it" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.magnitude\", \"save-format\": \"gptq\", \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"out\": \"$work/o3\"}"
bad "unknown save format" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.gptq\", \"save-format\": \"awq\", \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"out\": \"$work/o4\"}"
bad "a string where a number is expected" '{"nsamples": "16"}'
bad "a number where a path is expected" '{"model": 5}'
bad "a flag that is not a boolean" '{"qep": "yes"}'
[ ! -e "$work/o3" ] && [ ! -e "$work/o4" ] || { echo "FAIL: a refused run left its --out behind"; fail=1; }

# The command line wins over the recipe (reliability defect D18): --set bits
# replaces the recipe's, --nsamples too, and the run is the command line's.
sed -e "s|\"out\": \"$work/out\"|\"out\": \"$work/cli\"|" -e 's|"eval": [^,]*, "eval-seqlen": 256,||' \
  "$work/recipe.json" > "$work/recipe2.json"
"$qforge" quantize --recipe "$work/recipe2.json" --set bits=3 --nsamples 8 --json \
  > "$work/cli.json" 2> "$work/cli.err" || { echo "FAIL: recipe + --set"; cat "$work/cli.err"; fail=1; }
python3 - "$work/cli.json" "$work/cli/quant_results.safetensors" <<'PY' || fail=1
import json, struct, sys
s = json.load(open(sys.argv[1]))
assert s["calibration"].startswith("8 "), s["calibration"]
b = open(sys.argv[2], 'rb').read(); n, = struct.unpack_from('<Q', b)
layers = json.loads(json.loads(b[8:8 + n])["__metadata__"]["qforge.results"])["layers"]
bits = {l["name"]: json.loads(l["metadata"])["bits"] for l in layers}
assert bits["model.layers.0.self_attn.q_proj"] == 3, bits  # the command line's --set
assert bits["model.layers.0.mlp.down_proj"] == 8, bits     # the recipe's override still applies
print("ok:   the command line's --set and --nsamples win over the recipe, its overrides stay")
PY

# A quantized checkpoint is not quantized again; GPTQ configs that disagree are refused (D18).
"$qforge" quantize --model "$work/gptq" --method org.qforge.rtn \
  --calib "$shared/data/tinystories_v2_calib.txt" --nsamples 2 --seqlen 64 --out "$work/again" \
  > /dev/null 2> "$work/err"; rc=$?
[ $rc -eq 2 ] && grep -q "already quantized" "$work/err" && echo "ok:   re-quantizing a GPTQ checkpoint is refused" ||
  { echo "FAIL: re-quantizing a GPTQ checkpoint: exit $rc"; cat "$work/err"; fail=1; }
cp -r "$work/gptq" "$work/gptq2" && sed -i 's/"bits": 4/"bits": 8/' "$work/gptq2/quantize_config.json"
"$qforge" eval --model "$work/gptq2" --ppl "$work/eval.txt" --seqlen 256 > /dev/null 2> "$work/err"; rc=$?
[ $rc -eq 2 ] && grep -q "quantize_config.json: bits is 8" "$work/err" &&
  echo "ok:   quantize_config.json disagreeing with config.json is refused" ||
  { echo "FAIL: disagreeing GPTQ configs: exit $rc"; cat "$work/err"; fail=1; }
exit $fail
