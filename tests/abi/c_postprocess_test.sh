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
exit $fail
