#!/usr/bin/env bash
# `qforge postprocess` end to end on stories260K quantized with RTN 3-bit
# (compressed-tensors): LoRA teacher SFT killed part-way (SIGKILL) and
# stopped by Ctrl-C resumes to the same adapter as an uninterrupted run; a
# bad parameter, a missing teacher and unreadable data are refused with one
# line and leave nothing behind; --adapter and --merge agree.
# usage: postprocess_cli_test.sh <qforge binary> <shared dir>
set -euo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
V="$shared/data/tinystories_v2_valid_100.txt"

"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=3 --set group_size=32 \
  --out "$work/q" --save-format compressed-tensors --log-level warn > /dev/null
pp=(postprocess --model "$work/q" --postprocess org.qforge.lora.teacher-sft
    --pp-set max_train_samples=8 --pp-set max_length=128 --pp-set epochs=3
    --teacher "$M" --train-data "$C" --log-level warn)
"$qforge" "${pp[@]}" --out "$work/full" > /dev/null
check "an uninterrupted run writes a PEFT adapter" \
  '[ -f "$work/full/adapter/adapter_config.json" ] && [ -f "$work/full/adapter/adapter_model.safetensors" ]'
check "the checkpoint is copied beside it" '[ -f "$work/full/model.safetensors.index.json" ]'
check "no training state is left after success" '[ ! -e "$work/full/.qforge-checkpoint/postprocess-0" ]'

state() { echo "$1/.qforge-checkpoint/postprocess-0/train-state.safetensors"; }
interrupt() {  # interrupt <signal> <out>: stop the training after its first checkpoint
  local sig="$1" out="$2"
  QFORGE_TRAIN_CHECKPOINT_SECONDS=0 "$qforge" "${pp[@]}" --out "$out" > /dev/null 2> "$work/err" &
  local pid=$!
  for _ in $(seq 1 3000); do [ -f "$(state "$out")" ] && break; sleep 0.01; done
  kill "-$sig" "$pid" 2> /dev/null || true
  set +e; wait "$pid"; rc=$?; set -e
}
# safetensors payload: the tensor bytes after the header.
payload() { local n; n=$(od -An -t u8 -N8 "$1" | tr -d ' '); tail -c +$((n + 9)) "$1" | md5sum; }

interrupt KILL "$work/killed"
check "SIGKILL leaves the training checkpoint and no adapter" \
  '[ -f "$(state "$work/killed")" ] && [ ! -e "$work/killed/adapter" ]'
set +e; "$qforge" "${pp[@]}" --out "$work/killed" > /dev/null 2> "$work/err"; rc=$?; set -e
check "a rerun without --resume is refused (exit 2) and told to --resume" \
  '[ $rc -eq 2 ] && grep -q -- "--resume" "$work/err" && [ $(wc -l < "$work/err") -eq 1 ]'
"$qforge" "${pp[@]}" --out "$work/killed" --resume > /dev/null
check "killed and resumed: the same adapter as the uninterrupted run" \
  '[ "$(payload "$work/killed/adapter/adapter_model.safetensors")" = "$(payload "$work/full/adapter/adapter_model.safetensors")" ]'

interrupt INT "$work/int"
check "Ctrl-C: exit 130, told to --resume" '[ $rc -eq 130 ] && grep -q -- "--resume" "$work/err"'
"$qforge" "${pp[@]}" --out "$work/int" --resume > /dev/null
check "interrupted and resumed: the same adapter" \
  '[ "$(payload "$work/int/adapter/adapter_model.safetensors")" = "$(payload "$work/full/adapter/adapter_model.safetensors")" ]'

# The teacher's top-k cache on disk: with k = the whole vocabulary (512) it
# holds the teacher exactly, so training matches the live teacher's.
"$qforge" "${pp[@]}" --pp-set cache_teacher_outputs=true --pp-set teacher_top_k=512 \
  --out "$work/cached" > /dev/null
ppl() { "$qforge" eval "$@" --ppl "$V" --seqlen 256 --json --log-level warn | grep '"ppl"' | grep -o '[0-9.]*'; }
live=$(ppl --model "$work/full" --adapter "$work/full/adapter")
cached=$(ppl --model "$work/cached" --adapter "$work/cached/adapter")
echo "perplexity after teacher SFT: live teacher $live, top-512 cache $cached"
check "training on the full cache matches the live teacher (0.1%)" \
  "awk 'BEGIN{d=$cached-$live; if(d<0)d=-d; exit !(d < 0.001*$live)}'"
"$qforge" "${pp[@]}" --pp-set cache_teacher_outputs=true --pp-set teacher_top_k=16 \
  --out "$work/top16" > /dev/null
top16=$(ppl --model "$work/top16" --adapter "$work/top16/adapter")
echo "perplexity after teacher SFT with a top-16 cache: $top16"
check "a top-16 cache trains (lower than the quantized model) and is used (not the live result)" \
  "awk 'BEGIN{exit !($top16 < $(ppl --model "$work/q") && $top16 != $live)}'"

refused() {  # refused <what> <pattern> <args...>: exit 2, one line naming it, nothing written
  local what="$1" pattern="$2"; shift 2
  rm -rf "$work/bad"
  set +e; "$qforge" "$@" --out "$work/bad" --log-level warn > /dev/null 2> "$work/err"; rc=$?; set -e
  check "$what: exit 2, one line naming it, nothing written" \
    '[ $rc -eq 2 ] && [ $(wc -l < "$work/err") -eq 1 ] && grep -q -- "$pattern" "$work/err" && [ -z "$(ls -A "$work/bad" 2> /dev/null)" ]'
}
refused "a bad parameter" "lora_r" postprocess --model "$work/q" --postprocess org.qforge.lora.sft \
  --pp-set lora_r=0 --train-data "$C"
refused "an unknown parameter" "rank" postprocess --model "$work/q" --postprocess org.qforge.lora.sft \
  --pp-set rank=4 --train-data "$C"
refused "a missing teacher" "--teacher" postprocess --model "$work/q" \
  --postprocess org.qforge.lora.teacher-only --train-data "$C"
refused "a teacher that is not a model" "--teacher" postprocess --model "$work/q" \
  --postprocess org.qforge.lora.teacher-only --train-data "$C" --teacher "$work"
refused "a missing data file" "$work/none.txt" postprocess --model "$work/q" \
  --postprocess org.qforge.lora.sft --train-data "$work/none.txt"
head -c 300 /dev/urandom > "$work/binary.txt"
refused "a data file that is not text" "binary.txt" postprocess --model "$work/q" \
  --postprocess org.qforge.lora.sft --train-data "$work/binary.txt"
refused "no training data" "--train-data" postprocess --model "$work/q" --postprocess org.qforge.lora.sft
refused "a quantizer given as a post-process" "not a post-process" postprocess --model "$work/q" \
  --postprocess org.qforge.rtn --train-data "$C"

# --adapter on the packed model, and the same adapter merged into float16.
base=$(ppl --model "$work/q")
adapted=$(ppl --model "$work/full" --adapter "$work/full/adapter")
"$qforge" postprocess --model "$work/q" --adapter "$work/full/adapter" --merge --out "$work/merged" \
  --log-level warn > /dev/null
merged=$(ppl --model "$work/merged")
echo "perplexity: quantized $base, with the adapter $adapted, merged into float16 $merged"
check "the adapter lowers the perplexity" "awk 'BEGIN{exit !($adapted < $base)}'"
check "merged float16 agrees with the adapter run packed (0.5%)" \
  "awk 'BEGIN{d=$merged-$adapted; if(d<0)d=-d; exit !(d < 0.005*$adapted)}'"
check "the merged model is not quantized" '! grep -q quantization_config "$work/merged/config.json"'
exit $fail
