#!/usr/bin/env bash
# One run per output directory, and no stale weights beside the output:
#  - a second run into a locked --out is refused (exit 2, naming the holder)
#    while the first finishes with exit 0 and a model of its own;
#  - a stale model.safetensors in --out is refused before any work (exit 2),
#    and deleted with --force (the output then loads as the new model);
#  - the lock file does not outlive the run.
# usage: out_dir_test.sh <qforge binary> <shared dir>
set -uo pipefail
qforge="$1" shared="$2"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"

# Two runs, one directory: the first holds the lock from its start.
"$qforge" quantize --model "$M" --method org.qforge.gptq --set bits=3 --set group_size=32 \
  --calib "$C" --nsamples 128 --seqlen 256 --out "$work/o" --log-level warn > /dev/null 2>&1 &
first=$!
for _ in $(seq 100); do [ -e "$work/o/.qforge-lock" ] && break; sleep 0.05; done
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=8 --calib "$C" \
  --nsamples 8 --seqlen 64 --out "$work/o" > "$work/second.out" 2> "$work/second.err"
second=$?
wait "$first"; first_rc=$?
check "a second run into a locked --out exits 2" '[ "$second" -eq 2 ]'
check "... and names the holder" 'grep -q "in use by another qforge run (pid [0-9]*, qforge quantize" "$work/second.err"'
check "the first run finishes (exit 0)" '[ "$first_rc" -eq 0 ]'
check "its results are all GPTQ" '! grep -q "org.qforge.rtn" <(strings "$work/o/quant_results.safetensors")'
check "no lock file is left" '[ ! -e "$work/o/.qforge-lock" ]'

# A stale model.safetensors: refused, then deleted with --force.
mkdir "$work/stale" && cp "$M/model.safetensors" "$work/stale/"
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=3 --calib "$C" \
  --nsamples 8 --seqlen 64 --out "$work/stale" > /dev/null 2> "$work/stale.err"
rc=$?
check "a stale model.safetensors is refused (exit 2)" '[ "$rc" -eq 2 ] && grep -q "model.safetensors" "$work/stale.err"'
check "... before any work" '[ ! -e "$work/stale/.qforge-checkpoint" ] && [ ! -e "$work/stale/config.json" ]'
"$qforge" quantize --model "$M" --method org.qforge.rtn --set bits=3 --calib "$C" \
  --nsamples 8 --seqlen 64 --out "$work/stale" --force > /dev/null 2>&1
rc=$?
check "--force deletes it and runs (exit 0)" '[ "$rc" -eq 0 ] && [ ! -e "$work/stale/model.safetensors" ] && [ -e "$work/stale/model.safetensors.index.json" ]'
exit $fail
