#!/usr/bin/env bash
# Reconstruction on a saved checkpoint through `qforge postprocess`
# (stories260K quantized by GPTQ 3-bit g32 act-order, AutoGPTQ v1):
# org.qforge.blockwise (codes too), org.qforge.cbq and org.qforge.globalptq
# each lower the perplexity and leave an AutoGPTQ v1 checkpoint whose
# safetensors headers (every tensor's name, dtype, shape and offsets),
# config.json and quantize_config.json are byte for byte the quantized
# model's; a run killed after its first block and resumed writes the same
# bytes as an uninterrupted one; a GlobalPTQ that can only get worse keeps
# the model as it was. And `qforge quantize` runs a per-block and a
# model-wide post-process in one command.
# usage: reconstruct_cli_test.sh <qforge binary> <shared dir>
set -euo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
V="$shared/data/tinystories_v2_valid_100.txt"

gptq=(--method org.qforge.gptq --set bits=3 --set group_size=32 --set sym=false
      --set desc_act=true --save-format gptq --calib "$C" --nsamples 32 --seqlen 128)
"$qforge" quantize --model "$M" "${gptq[@]}" --out "$work/q" --log-level warn > /dev/null
data=(--teacher "$M" --train-data "$C" --log-level warn)
small=(--pp-set max_samples=24 --pp-set max_length=128 --pp-set holdout=4)
ppl() { "$qforge" eval --model "$1" --ppl "$V" --seqlen 256 --json --log-level warn | grep '"ppl"' | grep -o '[0-9.]*'; }
header() {  # the safetensors header: names, dtypes, shapes, offsets
  local n; n=$(od -An -t u8 -N8 "$1" | tr -d ' '); head -c $((n + 8)) "$1" | md5sum
}
same_layout() {  # same_layout DIR: AutoGPTQ v1 as $work/q is, tensor for tensor
  local f
  for f in config.json quantize_config.json model.safetensors.index.json; do
    cmp -s "$work/q/$f" "$1/$f" || return 1
  done
  for f in "$work/q"/model-*.safetensors; do
    [ "$(header "$f")" = "$(header "$1/$(basename "$f")")" ] || return 1
  done
}
payloads() { local f; for f in "$1"/model-block-*.safetensors; do tail -c +9 "$f" | md5sum; done; }
base=$(ppl "$work/q")

bw=(postprocess --model "$work/q" --postprocess org.qforge.blockwise --pp-set epochs=2
    --pp-set codes=true "${small[@]}" "${data[@]}")
"$qforge" "${bw[@]}" --out "$work/bw" > /dev/null
tuned=$(ppl "$work/bw")
echo "perplexity: GPTQ 3-bit $base, + blockwise (codes) on the saved checkpoint $tuned"
check "blockwise on a saved checkpoint lowers the perplexity" "awk 'BEGIN{exit !($tuned < $base)}'"
check "and leaves the AutoGPTQ v1 layout byte for byte" 'same_layout "$work/bw"'
check "its codes moved" '! cmp -s "$work/q/model-block-00002.safetensors" "$work/bw/model-block-00002.safetensors"'
check "no training state is left" '[ ! -e "$work/bw/.qforge-checkpoint/postprocess-0" ]'

# Killed after the first block's checkpoint, resumed: the same bytes.
state="$work/killed/.qforge-checkpoint/postprocess-0/train-state.safetensors"
"$qforge" "${bw[@]}" --out "$work/killed" > /dev/null 2> "$work/err" &
pid=$!
for _ in $(seq 1 6000); do [ -f "$state" ] && break; sleep 0.01; done
kill -KILL "$pid" 2> /dev/null || true
wait "$pid" || true
check "SIGKILL after the first block leaves its checkpoint" '[ -f "$state" ]'
"$qforge" "${bw[@]}" --out "$work/killed" --resume > /dev/null
check "killed and resumed: the same checkpoint as the uninterrupted run" \
  '[ "$(payloads "$work/killed")" = "$(payloads "$work/bw")" ]'

"$qforge" postprocess --model "$work/bw" --postprocess org.qforge.cbq --pp-set epochs=2 \
  "${small[@]}" "${data[@]}" --out "$work/cbq" > /dev/null
cbq=$(ppl "$work/cbq")
echo "perplexity: + CBQ (windows of 2) $cbq"
check "CBQ after blockwise lowers it further" "awk 'BEGIN{exit !($cbq < $tuned)}'"
check "and keeps the layout" 'same_layout "$work/cbq"'

"$qforge" postprocess --model "$work/q" --postprocess org.qforge.globalptq --pp-set epochs=2 \
  "${small[@]}" "${data[@]}" --out "$work/global" > /dev/null
global=$(ppl "$work/global")
echo "perplexity: GPTQ 3-bit + GlobalPTQ $global"
check "GlobalPTQ lowers the perplexity" "awk 'BEGIN{exit !($global < $base)}'"
check "and keeps the layout" 'same_layout "$work/global"'
# A learning rate that only overshoots: no evaluation beats the start, and
# the model is left as it was.
"$qforge" postprocess --model "$work/q" --postprocess org.qforge.globalptq --pp-set epochs=1 \
  --pp-set lr=0.9 --pp-set warmup_ratio=0 "${small[@]}" "${data[@]}" --out "$work/wild" > /dev/null 2> /dev/null
check "GlobalPTQ that only gets worse keeps the quantized model" \
  '[ "$(payloads "$work/wild")" = "$(payloads "$work/q")" ]'

# One command: blockwise per block inside the pipeline, then GlobalPTQ on
# what it wrote (the calibration text is the training data by default).
"$qforge" quantize --model "$M" "${gptq[@]}" --out "$work/both" --log-level warn \
  --postprocess org.qforge.blockwise --pp-set epochs=1 \
  --postprocess org.qforge.globalptq --pp-set epochs=1 "${small[@]}" > /dev/null
both=$(ppl "$work/both")
echo "perplexity: quantize --postprocess blockwise --postprocess globalptq: $both"
check "per-block and model-wide post-processes in one quantize command" \
  "awk 'BEGIN{exit !($both < $base)}' && same_layout '$work/both'"
exit $fail
