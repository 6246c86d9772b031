#!/usr/bin/env bash
# W8A8 from the command line on stories260K: `--scheme W8A8 --preprocess
# org.qforge.smoothquant` writes compressed-tensors int-quantized (I8 weights,
# float16 scales) whose perplexity read back from disk is exactly the packed
# model's in memory and the model's rebuilt from quant_results.safetensors
# (norms included); a recipe with "scheme" and "preprocess" runs the same;
# FP8 writes float-quantized (F8_E4M3, static input_scale); bad use is
# refused before any work.
# usage: w8a8_cli_test.sh <qforge binary> <shared dir>
set -euo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../../../tests/support/stories.sh"
V="$shared/data/tinystories_v2_valid_100.txt"
cal=(--calib "$C" --nsamples 16 --seqlen 128 --log-level warn)
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
header() {  # the safetensors header of $1 as JSON
  python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; print(f.read(n).decode())" "$1"
}
dtype() { header "$1" | json_field "['$2']['dtype']"; }
tensor() {  # tensor FILE NAME: the md5 of the tensor's values rounded to float16
  python3 -c "
import json, struct, sys, hashlib
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))
t = h[sys.argv[2]]; f.seek(8 + n + t['data_offsets'][0]); raw = f.read(t['data_offsets'][1] - t['data_offsets'][0])
c = 'e' if t['dtype'] == 'F16' else 'f'
v = struct.unpack('<%d%s' % (len(raw) // struct.calcsize(c), c), raw)
print(hashlib.md5(struct.pack('<%de' % len(v), *v)).hexdigest())" "$1" "$2"
}

# W8A8 + SmoothQuant into compressed-tensors, evaluated as written.
"$qforge" quantize --model "$M" "${cal[@]}" --scheme W8A8 --preprocess org.qforge.smoothquant \
  --pre-set alpha=0.8 --out "$work/ct" --eval "$V" --eval-seqlen 256 --json > "$work/ct.json" 2> "$work/err"
q_ct=$(json_field "['perplexity']['compressed-tensors']" < "$work/ct.json")
cfg="$work/ct/config.json"
check "the scheme picks org.qforge.w8a8 and saves int-quantized" \
  '[ "$(json_field "[\"quantization_config\"][\"format\"]" < "$cfg")" = int-quantized ]'
check "weights I8, scales F16" \
  '[ "$(dtype "$work/ct/model-block-00000.safetensors" model.layers.0.self_attn.q_proj.weight)" = I8 ] &&
   [ "$(dtype "$work/ct/model-block-00000.safetensors" model.layers.0.self_attn.q_proj.weight_scale)" = F16 ]'
check "the checkpoint read back by qforge eval has the written perplexity ($q_ct)" \
  '[ "$("$qforge" eval --model "$work/ct" --ppl "$V" --seqlen 256 --json --log-level warn | json_field "[\"perplexity\"][\"ppl\"]")" = "$q_ct" ]'
# The same results re-applied to the original model (the smoothed norms come
# from the results file), run packed in memory: the same perplexity.
"$qforge" quantize --model "$M" --from-results "$work/ct/quant_results.safetensors" \
  --out "$work/re" --eval "$V" --eval-seqlen 256 --json --log-level warn > "$work/re.json" 2> "$work/err"
check "re-applied results run packed give the same perplexity" \
  '[ "$(json_field "[\"perplexity\"][\"packed\"]" < "$work/re.json")" = "$q_ct" ]'
norm=model.layers.0.input_layernorm.weight
check "SmoothQuant's norms are in the checkpoint (not the model's)" \
  '[ "$(tensor "$work/ct/model-block-00000.safetensors" $norm)" != "$(tensor "$M/model.safetensors" $norm)" ]'
fp=$("$qforge" eval --model "$M" --ppl "$V" --seqlen 256 --json --log-level warn | json_field "['perplexity']['ppl']")
check "W8A8 + SmoothQuant is within 1 % of FP ($q_ct vs $fp)" \
  'python3 -c "import sys; sys.exit(0 if $q_ct / $fp < 1.01 else 1)"'

# A recipe with the same scheme and pre-process writes the same checkpoint.
cat > "$work/recipe.json" <<JSON
{"model": "$M", "calib": "$C", "nsamples": 16, "seqlen": 128, "scheme": "W8A8",
 "preprocess": [{"id": "org.qforge.smoothquant", "set": {"alpha": 0.8}}]}
JSON
"$qforge" quantize --recipe "$work/recipe.json" --out "$work/recipe" --log-level warn > /dev/null 2> "$work/err"
check "the recipe writes the same tensors" \
  'cmp -s "$work/ct/model-block-00000.safetensors" "$work/recipe/model-block-00000.safetensors" &&
   cmp -s "$work/ct/config.json" "$work/recipe/config.json"'

# FP8 (static activations): float-quantized, F8_E4M3 weights, input_scale.
"$qforge" quantize --model "$M" "${cal[@]}" --scheme FP8 --out "$work/fp8" > /dev/null 2> "$work/err"
check "FP8 saves float-quantized with F8_E4M3 weights and an input_scale" \
  '[ "$(json_field "[\"quantization_config\"][\"format\"]" < "$work/fp8/config.json")" = float-quantized ] &&
   [ "$(dtype "$work/fp8/model-block-00000.safetensors" model.layers.0.mlp.up_proj.weight)" = F8_E4M3 ] &&
   [ "$(dtype "$work/fp8/model-block-00000.safetensors" model.layers.0.mlp.up_proj.input_scale)" = F16 ]'

# Refusals, before any work.
refused() {  # refused NEEDLE ARGS...: exit 2 with NEEDLE in the message, nothing written
  local needle="$1"; shift
  rm -rf "$work/bad"
  ! "$qforge" quantize --model "$M" "$@" --out "$work/bad" > /dev/null 2> "$work/err" &&
    grep -q -- "$needle" "$work/err" && [ ! -e "$work/bad/config.json" ]
}
check "an unknown scheme is refused, listing the known ones" 'refused "W8A8" --scheme W9A9 "${cal[@]}"'
check "a scheme the --method does not implement is refused" \
  'refused "does not implement" --scheme W8A8 --method org.qforge.rtn "${cal[@]}"'
check "a pre-process without calibration data is refused" \
  'refused "--calib" --scheme W8A8 --preprocess org.qforge.smoothquant'
check "a component that is not a pre-process is refused" \
  'refused "not a pre-process" --scheme W8A8 --preprocess org.qforge.rtn "${cal[@]}"'
check "static activations without calibration data are refused" \
  'refused "--calib" --scheme W8A8 --set activations=static'
check "--from-results with a scheme or a pre-process is refused" \
  'refused "do not apply" --from-results "$work/ct/quant_results.safetensors" --scheme W8A8 &&
   refused "do not apply" --from-results "$work/ct/quant_results.safetensors" --preprocess org.qforge.smoothquant'
check "plugins show lists the schemes" \
  '"$qforge" plugins show org.qforge.fp8 | grep -q "FP8_DYNAMIC"'
exit $fail
