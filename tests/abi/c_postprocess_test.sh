#!/usr/bin/env bash
# The C post-process (c_postprocess.c) trains through qforge.host.train on
# stories260K quantized with RTN: the run succeeds only if the loss went down;
# its rank-1 adapters are written as a PEFT adapter that eval reads back.
# usage: c_postprocess_test.sh <qforge binary> <shared dir> <its plugin dir>
set -euo pipefail
qforge="$1" shared="$2" plugin_dir="$3"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=4 --set group_size=32 \
  --out "$work/q" --save-format compressed-tensors --log-level warn > /dev/null
"$qforge" --plugin-dir "$plugin_dir" postprocess --model "$work/q" \
  --postprocess org.qforge.test.rank1-lora --train-data "$C" --out "$work/q" 2> "$work/err" > /dev/null
check "the C post-process trained (its loss went down)" 'grep -q "cross-entropy" "$work/err"'
check "its adapters are a PEFT adapter of rank 1" \
  'grep -q "\"r\": 1" "$work/q/adapter/adapter_config.json"'
"$qforge" eval --model "$work/q" --adapter "$work/q/adapter" --ppl "$shared/data/tinystories_v2_valid_100.txt" \
  --seqlen 256 --log-level warn > "$work/out"
check "eval reads it back" 'grep -q "perplexity:" "$work/out"'

# The per-block hook: inside quantize, each block's adapters are trained on
# the block's output error against the unquantized block before its output
# feeds the next block (the plugin fails unless that error went down).
q=(quantize --model "$M" --method org.qforge.rtn --set bits=3 --set group_size=32 --calib "$C"
   --nsamples 8 --seqlen 128 --postprocess org.qforge.test.rank1-lora --pp-set steps=24)
"$qforge" --plugin-dir "$plugin_dir" "${q[@]}" --out "$work/b" --save-format compressed-tensors \
  2> "$work/err" > /dev/null
check "run_block trained every block (its error went down)" \
  '[ $(grep -c "rank1-lora block [0-4]: 1 adapters" "$work/err") -eq 5 ]'
check "the five blocks' adapters are one PEFT adapter" \
  '[ -f "$work/b/adapter/adapter_model.safetensors" ] && grep -q "down_proj" "$work/b/adapter/adapter_config.json"'
"$qforge" --plugin-dir "$plugin_dir" quantize --model "$M" --method org.qforge.rtn --set bits=3 \
  --set group_size=32 --out "$work/plain" --save-format compressed-tensors --log-level warn > /dev/null
ppl() { "$qforge" eval "$@" --ppl "$shared/data/tinystories_v2_valid_100.txt" --seqlen 256 --json \
        --log-level warn | grep '"ppl"' | grep -o '[0-9.]*'; }
plain=$(ppl --model "$work/plain") rebuilt=$(ppl --model "$work/b" --adapter "$work/b/adapter")
echo "perplexity: RTN 3-bit $plain, with block-wise rank-1 adapters $rebuilt"
check "block-wise adapters lower the perplexity" "awk 'BEGIN{exit !($rebuilt < $plain)}'"

# Killed after block 2 and resumed: the same adapter.
"$qforge" --plugin-dir "$plugin_dir" "${q[@]}" --out "$work/k" --save-format compressed-tensors \
  --log-level warn > /dev/null 2>&1 &
pid=$!
for _ in $(seq 1 3000); do
  grep -qs '"next_block":[2-9]' "$work/k/.qforge-checkpoint/state.json" && break; sleep 0.01
done
kill -KILL "$pid" 2> /dev/null || true
wait "$pid" 2> /dev/null || true
"$qforge" --plugin-dir "$plugin_dir" "${q[@]}" --out "$work/k" --save-format compressed-tensors \
  --resume --log-level warn > /dev/null
payload() { local n; n=$(od -An -t u8 -N8 "$1" | tr -d ' '); tail -c +$((n + 9)) "$1" | md5sum; }
check "killed after block 2 and resumed: the same adapter" \
  '[ "$(payload "$work/k/adapter/adapter_model.safetensors")" = "$(payload "$work/b/adapter/adapter_model.safetensors")" ]'
exit $fail
