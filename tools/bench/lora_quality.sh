#!/usr/bin/env bash
# LoRA post-processes on stories260K: full precision, GPTQ 3-bit (group 32,
# asymmetric, act-order; an AutoGPTQ v1 checkpoint), and that checkpoint
# plus each of the three LoRA variants (org.qforge.lora.sft, .teacher-sft,
# .teacher-only) with their defaults, trained on tinystories_v2_calib.txt.
# Every figure is measured by `qforge eval` from the files written to disk
# (the checkpoint, and its PEFT adapter through --adapter): perplexity of
# tinystories_valid.txt (windows of 512) and story_choices.jsonl accuracy.
# Prints the commands it runs and a Markdown table (the README's).
#
# usage: tools/bench/lora_quality.sh [build dir] [shared dir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/stories_env.sh"

run() { echo "+ $*" >&2; "$@"; }
ppl() { run "$Q" eval "$@" --ppl "$D/tinystories_valid.txt" --json 2>/dev/null | field '["perplexity"]["ppl"]'; }
acc() { run "$Q" eval "$@" --choices "$D/story_choices.jsonl" --json 2>/dev/null | field '["choices"]["acc"]'; }

echo "| model | perplexity | story_choices acc | training time |"
echo "|---|---|---|---|"
echo "| full precision | $(ppl --model "$M") | $(acc --model "$M") | |"
run "$Q" quantize --model "$M" --method org.qforge.gptq --set bits=3 --set group_size=32 \
  --set sym=false --set desc_act=true --calib "$D/tinystories_v2_calib.txt" --out "$work/g3" \
  --save-format gptq > /dev/null 2>&1
echo "| GPTQ 3-bit g32 asym act-order | $(ppl --model "$work/g3") | $(acc --model "$work/g3") | |"
for id in sft teacher-sft teacher-only; do
  t0=$(date +%s.%N)
  run "$Q" postprocess --model "$work/g3" --postprocess "org.qforge.lora.$id" --teacher "$M" \
    --train-data "$D/tinystories_v2_calib.txt" --out "$work/$id" > /dev/null 2>&1
  secs=$(python3 -c "import time; print('%.1f s' % (time.time() - $t0))")
  a="$work/$id/adapter"
  echo "| GPTQ-3 + org.qforge.lora.$id | $(ppl --model "$work/$id" --adapter "$a") | $(acc --model "$work/$id" --adapter "$a") | $secs |"
done
