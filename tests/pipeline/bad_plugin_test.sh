#!/usr/bin/env bash
# A plugin that hangs, crashes or ignores Ctrl-C never takes a run down with
# it silently (reliability defects D14, D15; issue 10 items 2, 7, 8):
#  - an init that never returns is given up on, the rest load, and commands
#    that need no plugin (eval of an unquantized model) never load it;
#  - a crash inside a plugin leaves a checkpoint that --resume continues
#    from, and the next run names the component and layer that were running;
#  - Ctrl-C inside a plugin that never polls stops qforge (exit 130) after
#    the grace period, and --resume then finishes the run.
# usage: bad_plugin_test.sh <qforge binary> <shared dir> <dir of the test plugins' folders>
set -uo pipefail
qforge="$1" shared="$2" plugins="$3"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
head -c 3000 "$shared/data/tinystories_valid.txt" > "$work/tiny.txt"
B=(--calib "$C" --nsamples 4 --seqlen 64)

# 1. An init that never returns.
QFORGE_PLUGIN_INIT_TIMEOUT=1 timeout 60 "$qforge" --plugin-dir "$plugins/init_hangs" plugins \
  > "$work/out" 2> "$work/err"; rc=$?
check "plugins: a hanging init is refused after the limit, exit 0 (got $rc)" \
  '[ $rc -eq 0 ] && grep -q "init_hangs.so: init did not return within 1 s" "$work/err"'
check "... and the other plugins load" 'grep -q "org.qforge.rtn" "$work/out"'
start=$SECONDS
timeout 60 "$qforge" --plugin-dir "$plugins/init_hangs" eval --model "$M" --ppl "$work/tiny.txt" \
  > "$work/out" 2> "$work/err"; rc=$?
check "eval of an unquantized model loads no plugin: not held up by it (exit $rc, $((SECONDS - start)) s)" \
  '[ $rc -eq 0 ] && [ $((SECONDS - start)) -lt 25 ] && ! grep -q "init_hangs" "$work/err"'

# 2. A crash in block 2: the next run names it, and --resume continues.
# (The test plugin crashes on layers whose name holds $QF_TEST_CRASH_AT.)
Q=("$qforge" --plugin-dir "$plugins/crash_weights" quantize --model "$M"
   --method org.qforge.test.crash-weights "${B[@]}")
QF_TEST_CRASH_AT=model.layers.2.mlp timeout 120 "${Q[@]}" --out "$work/crash" \
  > "$work/out" 2> "$work/err"; rc=$?
check "a crash in block 2 kills the run with the crash's status (got $rc)" '[ $rc -eq 139 ]'
timeout 120 "${Q[@]}" --out "$work/crash" > "$work/out" 2> "$work/err"; rc=$?
check "a rerun without --resume is refused in one line that also names what died (exit $rc)" \
  '[ $rc -eq 2 ] && [ $(wc -l < "$work/err") -eq 1 ] && grep -q "resume.*died while running org.qforge.test.crash-weights" "$work/err"'
QF_TEST_CRASH_AT=nowhere timeout 120 "${Q[@]}" --out "$work/crash" --resume \
  > "$work/out" 2> "$work/err"; rc=$?
check "--resume continues from block 2 and finishes (exit $rc)" \
  '[ $rc -eq 0 ] && grep -q "resuming at block 2/5" "$work/err"'
check "... and names what the dead run was running" \
  'grep -q "died while running org.qforge.test.crash-weights .* on model.layers.2.mlp" "$work/err"'
check "... leaving a complete model and no checkpoint" \
  '[ -f "$work/crash/model.safetensors.index.json" ] && [ ! -e "$work/crash/.qforge-checkpoint" ]'

# A crash in the very first layer: --resume starts again at block 0.
QF_TEST_CRASH_AT=model.layers.0.self_attn timeout 120 "${Q[@]}" --out "$work/crash0" \
  > "$work/out" 2> "$work/err"
QF_TEST_CRASH_AT=nowhere timeout 120 "${Q[@]}" --out "$work/crash0" --resume \
  > "$work/out" 2> "$work/err"; rc=$?
check "--resume after a crash in the first block starts at block 0 (exit $rc)" \
  '[ $rc -eq 0 ] && grep -q "no finished block" "$work/err"'

# 3. Ctrl-C inside a plugin that never polls.
"$qforge" --plugin-dir "$plugins/hang_weights" quantize --model "$M" \
  --method org.qforge.test.hang-weights "${B[@]}" --out "$work/hang" > "$work/out" 2> "$work/err" &
pid=$!
for _ in $(seq 600); do [ -s "$work/hang/.qforge-checkpoint/running" ] && break; sleep 0.1; done
start=$SECONDS
kill -INT $pid
wait $pid; rc=$?
check "Ctrl-C in a plugin that never returns: exit 130 after the grace period (got $rc in $((SECONDS - start)) s)" \
  '[ $rc -eq 130 ] && [ $((SECONDS - start)) -lt 30 ] && grep -q "did not stop after Ctrl-C" "$work/err"'
check "... the checkpoint is left for --resume" '[ -d "$work/hang/.qforge-checkpoint" ]'
exit $fail
