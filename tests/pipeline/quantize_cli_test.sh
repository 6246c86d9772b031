#!/usr/bin/env bash
# `qforge quantize` from a JSON recipe on stories260K: RTN through the pipeline
# writes a model, and its perplexity is printed beside the original's (and the
# packed model's). Bad recipes are refused with exit 2.
# usage: quantize_cli_test.sh <qforge binary> <shared dir>
set -uo pipefail
qforge="$1" shared="$2"
if [ ! -d "$shared/models/stories260K" ]; then
  [ "${CI:-}" = "true" ] && { echo "FAIL: shared data missing: $shared"; exit 1; }
  echo "skip: shared data missing"; exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail=0
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
g=$(awk '$1 == "gptq" {print $2}' "$work/gptq.out"); p=$(awk '$1 == "packed" {print $2}' "$work/gptq.out")
[ -n "$g" ] && [ "$g" = "$p" ] || { echo "FAIL: gptq checkpoint ppl '$g' != packed '$p'"; fail=1; }
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
bad "gptq checkpoint from a method that cannot write it" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.rtn\", \"save-format\": \"gptq\", \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"out\": \"$work/o3\"}"
bad "unknown save format" "{\"model\": \"$shared/models/stories260K\", \"method\": \"org.qforge.gptq\", \"save-format\": \"awq\", \"calib\": \"$shared/data/tinystories_v2_calib.txt\", \"out\": \"$work/o4\"}"
[ ! -e "$work/o3" ] && [ ! -e "$work/o4" ] || { echo "FAIL: a refused run left its --out behind"; fail=1; }
exit $fail
