#!/usr/bin/env bash
# Pruning from the command line on stories260K, with calibration:
#   (a) SparseGPT 2:4 saved compressed-tensors (pruned linears dense float16,
#       every linear ignored by the config groups, sparsity_config filled),
#   (b) SparseGPT 2:4 + 4-bit g32 saved gptq (AutoGPTQ v1),
#   (c) magnitude 2:4 saved compressed-tensors,
#   and SparseGPT 2:4 + FP8 saved compressed-tensors (float-quantized);
# each checked from the saved safetensors files by sparse_checkpoint_check
# (its own decoder of dense / GPTQ / FP8 weights): exactly two zeros in every
# four consecutive inputs of every linear; read back by `qforge eval`
# (finite perplexity, SparseGPT's below magnitude's); refusals.
# usage: sparsegpt_cli_test.sh <qforge binary> <shared dir> <sparse_checkpoint_check binary>
set -euo pipefail
qforge="$1" shared="$2" checker="$3"
source "$(dirname "${BASH_SOURCE[0]}")/../../../tests/support/stories.sh"
V="$shared/data/tinystories_v2_valid_100.txt"
cal=(--calib "$C" --nsamples 16 --seqlen 128 --log-level warn)
json_field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
ppl() { "$qforge" eval --model "$1" --ppl "$V" --seqlen 256 --json --log-level warn | json_field "['perplexity']['ppl']"; }
finite() { python3 -c "import math,sys; sys.exit(0 if math.isfinite(float('$1')) and float('$1') > 1 else 1)"; }
# The config's sparsity_config is {format dense, targets = every block
# linear, ignore = [lm_head], structure 2:4, registry_requires_subclass
# false}, its global_sparsity the checker's measure (0.5), and no config group.
# With quantized layers (QUANTIZED=1) they are in config groups instead,
# and the config's ignore is [lm_head].
sparsity_config_ok() {  # DIR MEASURED [QUANTIZED]
  python3 - "$1/config.json" "$2" "${3:-0}" <<'PY'
import json, sys
q = json.load(open(sys.argv[1]))["quantization_config"]
s = q["sparsity_config"]
linears = [f"model.layers.{i}.{n}" for i in range(5) for n in (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
quantized = sys.argv[3] == "1"
ok = (q["quant_method"] == "compressed-tensors" and (q["config_groups"] != {}) == quantized and
      sorted(q["ignore"]) == (["lm_head"] if quantized else sorted(linears + ["lm_head"])) and
      s["format"] == "dense" and sorted(s["targets"]) == sorted(linears) and
      s["ignore"] == ["lm_head"] and s["sparsity_structure"] == "2:4" and
      s["registry_requires_subclass"] is False and
      abs(s["global_sparsity"] - float(sys.argv[2])) < 1e-12 and s["global_sparsity"] == 0.5)
print(json.dumps(q, indent=1)) if not ok else None
sys.exit(0 if ok else 1)
PY
}
measured() { "$checker" "$1" 2:4 > "$work/check" 2> "$work/err" && tail -1 "$work/check" | cut -d' ' -f2; }

# (a) SparseGPT 2:4, float weights, compressed-tensors.
"$qforge" quantize --model "$M" "${cal[@]}" --method org.qforge.sparsegpt \
  --save-format compressed-tensors --out "$work/a" > /dev/null 2> "$work/err"
check "(a) SparseGPT 2:4: every saved linear is exactly 2:4 (dense float16)" \
  'a_sparsity=$(measured "$work/a") && grep -q "q_proj" "$work/check"'
check "(a) its sparsity_config describes it, no config group" 'sparsity_config_ok "$work/a" "$a_sparsity"'
a_ppl=$(ppl "$work/a" 2> "$work/err" || echo nan)
check "(a) qforge eval reads it back (perplexity $a_ppl)" 'finite "$a_ppl"'

# Killed after block 2 and resumed: the same config.json (sparsity_config
# rebuilt from the checkpointed blocks) and shards.
a_args=(quantize --model "$M" "${cal[@]}" --method org.qforge.sparsegpt --save-format compressed-tensors)
"$qforge" "${a_args[@]}" --out "$work/r" > /dev/null 2> "$work/err" &
pid=$!
for _ in $(seq 1 2000); do
  grep -qs '"next_block":[2-9]' "$work/r/.qforge-checkpoint/state.json" && break
  sleep 0.01
done
kill -KILL "$pid" 2> /dev/null || true
wait "$pid" 2> /dev/null || true
midway=no
[ -d "$work/r/.qforge-checkpoint" ] && [ ! -e "$work/r/config.json" ] && midway=yes
"$qforge" "${a_args[@]}" --out "$work/r" --resume > /dev/null 2> "$work/err" || true
check "(a) killed after block 2 (midway: $midway) and resumed: the same config.json and shards" \
  '[ $midway = yes ] && ( for f in "$work/a"/config.json "$work/a"/model-*.safetensors; do
      cmp "$f" "$work/r/$(basename "$f")" || exit 1; done )'

# (b) SparseGPT 2:4 + 4-bit g32, gptq.
"$qforge" quantize --model "$M" "${cal[@]}" --method org.qforge.sparsegpt --set weights=int \
  --set bits=4 --set group_size=32 --save-format gptq --out "$work/b" > /dev/null 2> "$work/err"
check "(b) SparseGPT 2:4 + 4-bit: every saved GPTQ linear decodes exactly 2:4" 'measured "$work/b" > /dev/null'
check "(b) it is an AutoGPTQ v1 checkpoint of 4 bits, groups of 32" \
  '[ "$(json_field "[\"quantization_config\"][\"bits\"]" < "$work/b/config.json")" = 4 ] &&
   [ "$(json_field "[\"quantization_config\"][\"group_size\"]" < "$work/b/config.json")" = 32 ]'
b_ppl=$(ppl "$work/b" 2> "$work/err" || echo nan)
check "(b) qforge eval reads it back (perplexity $b_ppl)" 'finite "$b_ppl"'

# (c) magnitude 2:4, compressed-tensors.
"$qforge" quantize --model "$M" --method org.qforge.magnitude --log-level warn \
  --save-format compressed-tensors --out "$work/c" > /dev/null 2> "$work/err"
check "(c) magnitude 2:4: every saved linear is exactly 2:4" 'c_sparsity=$(measured "$work/c")'
check "(c) its sparsity_config describes it" 'sparsity_config_ok "$work/c" "$c_sparsity"'
c_ppl=$(ppl "$work/c" 2> "$work/err" || echo nan)
check "(c) qforge eval reads it back (perplexity $c_ppl)" 'finite "$c_ppl"'
check "SparseGPT 2:4 ($a_ppl) beats magnitude 2:4 ($c_ppl)" \
  'python3 -c "import sys; sys.exit(0 if $a_ppl < $c_ppl else 1)"'

# SparseGPT 2:4 + FP8 (dynamic per-token activations): float-quantized
# weights in a config group, also sparsity targets.
"$qforge" quantize --model "$M" "${cal[@]}" --method org.qforge.sparsegpt --set weights=fp8 \
  --save-format compressed-tensors --out "$work/f" > /dev/null 2> "$work/err"
check "2:4 + FP8: every saved F8_E4M3 linear decodes exactly 2:4" 'f_sparsity=$(measured "$work/f")'
check "2:4 + FP8: float-quantized config group and sparsity_config" \
  'sparsity_config_ok "$work/f" "$f_sparsity" 1 &&
   [ "$(json_field "[\"quantization_config\"][\"format\"]" < "$work/f/config.json")" = float-quantized ]'
f_ppl=$(ppl "$work/f" 2> "$work/err" || echo nan)
check "2:4 + FP8: qforge eval reads it back (perplexity $f_ppl)" 'finite "$f_ppl"'

# Dequantized: any Llama loader reads it; the zeros are exact in float16.
"$qforge" quantize --model "$M" --method org.qforge.magnitude --log-level warn \
  --save-format dequantized --out "$work/d" > /dev/null 2> "$work/err"
check "--save-format dequantized keeps 2:4 exactly" 'measured "$work/d" > /dev/null'

# Refusals.
refused() {  # refused NEEDLE ARGS...: exit 2 with NEEDLE in the message
  local needle="$1"; shift
  rm -rf "$work/bad"
  set +e; "$qforge" quantize --model "$M" "$@" --out "$work/bad" > /dev/null 2> "$work/err"; local rc=$?; set -e
  [ $rc = 2 ] && grep -q -- "$needle" "$work/err"
}
check "SparseGPT without calibration data is refused" \
  'refused "calib" --method org.qforge.sparsegpt --log-level warn'
check "a malformed mask is refused" \
  'refused "N:M" --method org.qforge.magnitude --set mask=4:2 --log-level warn'
check "--save-format qforge refuses pruned float layers, naming the formats that hold them" \
  'refused "compressed-tensors or dequantized" --method org.qforge.magnitude --save-format qforge --log-level warn'
check "plugins show tells the parameters" \
  '"$qforge" plugins show org.qforge.sparsegpt > "$work/show" && grep -q "mask" "$work/show" &&
   grep -q "weights" "$work/show" && grep -q "2:4" "$work/show"'
exit $fail
