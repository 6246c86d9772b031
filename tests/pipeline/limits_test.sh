#!/usr/bin/env bash
# Limits and checks that protect the machine and the output (reliability
# defects D6, D7, D8, D10, D11, D12, D16): each refusal is one sentence with exit 2 (or
# 1 for a plugin's wrong result), quick, and writes nothing it should not.
# usage: limits_test.sh <qforge binary> <shared dir> <dir of the test plugins' folders>
set -uo pipefail
qforge="$1" shared="$2" plugins="$3" nan_dir="$3/nan_weights"
source "$(dirname "${BASH_SOURCE[0]}")/../support/stories.sh"
expect() {  # expect <exit code> <text in stderr> <description> -- command...
  local want="$1" text="$2" what="$3"; shift 4
  timeout 120 "$@" > "$work/out" 2> "$work/err"
  local got=$?
  if [ "$got" -ne "$want" ] || ! grep -q -- "$text" "$work/err"; then
    echo "FAIL: $what: exit $got (expected $want), stderr:"; cat "$work/err"; fail=1
  else
    echo "ok:   $what"
  fi
}
R=(quantize --model "$M" --method org.qforge.rtn --calib "$C" --nsamples 4)

expect 2 "at most" "--threads far above the cores is refused (D7)" -- "$qforge" --threads 10000 plugins
expect 2 "max_position_embeddings" "an explicit --seqlen beyond the model is refused (D6)" \
  -- "$qforge" "${R[@]}" --seqlen 1024 --out "$work/a"
expect 2 "more than this machine" "a calibration larger than memory is refused (D6)" \
  -- "$qforge" quantize --model "$M" --method org.qforge.rtn --calib "$C" --nsamples 100000000 --seqlen 512 --out "$work/b"
expect 2 "matches no selected layer" "an --override matching nothing is refused (D11)" \
  -- "$qforge" "${R[@]}" --seqlen 64 --override '*no_such_proj:bits=8' --out "$work/c"
[ ! -e "$work/a" ] && [ ! -e "$work/b" ] && [ ! -e "$work/c" ] && echo "ok:   refusals leave no --out" ||
  { echo "FAIL: a refused run left its --out"; fail=1; }
# The default --seqlen (2048) is cut to the model's 512 positions, and said.
expect 0 "max_position_embeddings" "the default --seqlen is cut to the model's positions (D6)" \
  -- "$qforge" "${R[@]}" --out "$work/d"

# A symlink planted in --out is replaced, not written through (D8).
echo ORIGINAL > "$work/victim"
mkdir "$work/e" && ln -s "$work/victim" "$work/e/tokenizer_config.json"
expect 0 "" "a run into an --out with a planted symlink" -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/e"
[ "$(cat "$work/victim")" = ORIGINAL ] && [ ! -L "$work/e/tokenizer_config.json" ] &&
  echo "ok:   the symlink's target is untouched" || { echo "FAIL: wrote through a symlink"; fail=1; }

# A planted .qforge-checkpoint or lock symlink is refused, never written through (D8).
mkdir -p "$work/e2" "$work/elsewhere" && ln -s "$work/elsewhere" "$work/e2/.qforge-checkpoint"
expect 2 "is a symbolic link" "a symlinked checkpoint directory is refused" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/e2"
mkdir -p "$work/e3" && ln -s "$work/victim" "$work/e3/.qforge-lock"
expect 2 "is a symbolic link" "a symlinked lock file is refused" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/e3"
[ -z "$(ls -A "$work/elsewhere")" ] && [ "$(cat "$work/victim")" = ORIGINAL ] &&
  echo "ok:   ... nothing written through them" || { echo "FAIL: wrote through a symlink"; fail=1; }

# A parameter the schema lets through but the plugin refuses (group_size=0)
# stops at the first layer; a rerun into the same --out is not blocked (D12).
expect 2 "group_size" "group_size=0 is refused by the plugin" \
  -- "$qforge" "${R[@]}" --seqlen 64 --set group_size=0 --out "$work/gs"
expect 0 "" "... and a rerun into the same --out works" -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/gs"

# A plugin returning NaN: refused with the layer named, before any shard (D10).
expect 1 "non-finite weights for model.layers.0.self_attn.q_proj" \
  "a plugin's NaN weights are refused, the layer named" \
  -- "$qforge" --plugin-dir "$nan_dir" quantize --model "$M" --method org.qforge.test.nan-weights \
     --calib "$C" --nsamples 4 --seqlen 64 --out "$work/f"
[ ! -e "$work/f/model-block-00000.safetensors" ] && echo "ok:   no shard was written" ||
  { echo "FAIL: a NaN shard was written"; fail=1; }

# A plugin that crashes or calls exit(): the component and layer are named,
# and the exit status is not success (reliability defects D14, issue item 7).
expect 139 "crashed in org.qforge.test.crash-weights" "a plugin crash names the component" \
  -- "$qforge" --plugin-dir "$plugins/crash_weights" quantize --model "$M" \
     --method org.qforge.test.crash-weights --calib "$C" --nsamples 4 --seqlen 64 --out "$work/x"
grep -q "model.layers.0.self_attn.q_proj" "$work/err" && echo "ok:   ... and the layer" ||
  { echo "FAIL: the crash report does not name the layer"; fail=1; }
expect 1 "called exit() while running org.qforge.test.exit-weights" \
  "a plugin's exit(0) is not success" \
  -- "$qforge" --plugin-dir "$plugins/exit_weights" quantize --model "$M" \
     --method org.qforge.test.exit-weights --calib "$C" --nsamples 4 --seqlen 64 --out "$work/y"

# Cheap checks before expensive work (D12).
expect 2 "is the model directory" "--out = --model is refused" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$M"
expect 2 "not a readable, non-empty text file" "a missing --eval file is refused before the run" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/g" --eval "$work/no-such.txt"
[ ! -e "$work/g" ] && echo "ok:   ... with nothing written" || { echo "FAIL: --out written"; fail=1; }
head -c 800 "$shared/data/tinystories_valid.txt" > "$work/short.txt"
expect 2 "eval-seqlen must be in \[2, 512\]" "an --eval-seqlen beyond the model is refused before the run" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/g" --eval "$work/short.txt" --eval-seqlen 1024
expect 2 "less than one window" "an --eval text shorter than one window is refused before the run" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/g" --eval "$work/short.txt" --eval-seqlen 512
[ ! -e "$work/g" ] && echo "ok:   ... with nothing written" || { echo "FAIL: --out written"; fail=1; }
cp -r "$M" "$work/m" && chmod -R u+w "$work/m"
python3 - "$work/m/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
n, = struct.unpack_from('<Q', b); h = json.loads(b[8:8 + n])
h['model.layers.4.mlp.up_proj.weighx'] = h.pop('model.layers.4.mlp.up_proj.weight')
t = json.dumps(h, separators=(',', ':')).encode(); t += b' ' * (n - len(t))
assert len(t) == n
open(p, 'wb').write(b[:8] + t + b[8 + n:])
PY
expect 2 "model.layers.4.mlp.up_proj.weight" "a tensor missing in the last block is found before the first" \
  -- "$qforge" quantize --model "$work/m" --method org.qforge.rtn --calib "$C" --nsamples 4 \
     --seqlen 64 --out "$work/h"
[ ! -e "$work/h/model-block-00000.safetensors" ] && echo "ok:   ... before any shard" ||
  { echo "FAIL: shards written before the check"; fail=1; }

# quantize validates the model as eval would before writing anything (D5).
cp -r "$M" "$work/v" && chmod -R u+w "$work/v"
sed -i 's/"vocab_size": 512/"vocab_size": 1000/' "$work/v/config.json"
expect 2 "config implies \[1000, 64\]" "a vocabulary the embedding does not have is refused (D5)" \
  -- "$qforge" quantize --model "$work/v" --method org.qforge.rtn --calib "$C" --nsamples 4 \
     --seqlen 64 --out "$work/vo"
cp "$M/config.json" "$work/v/config.json" && sed -i 's/"num_hidden_layers": 5/"num_hidden_layers": 2/' "$work/v/config.json"
expect 2 "num_hidden_layers is 2" "blocks beyond num_hidden_layers are refused, not dropped (D5)" \
  -- "$qforge" quantize --model "$work/v" --method org.qforge.rtn --calib "$C" --nsamples 4 \
     --seqlen 64 --out "$work/vo"
expect 2 "num_hidden_layers is 2" "... by eval too" -- "$qforge" eval --model "$work/v" --ppl "$C"

# A config.json syntax error is named as such (D17).
cp "$M/config.json" "$work/v/config.json" && sed -i 's/"rms_norm_eps": [^,]*/"rms_norm_eps": NaN/' "$work/v/config.json"
expect 2 "not valid JSON" "a config.json syntax error says so (D17)" \
  -- "$qforge" eval --model "$work/v" --ppl "$C"

# Results qforge cannot vouch for are refused, not printed (D17): a NaN weight
# (the tensor named), integers stored as a linear weight, a model with one position.
head -c 3000 "$shared/data/tinystories_valid.txt" > "$work/tiny.txt"
cp -r "$M" "$work/n" && chmod -R u+w "$work/n"
python3 - "$work/n/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read())
n, = struct.unpack_from('<Q', b); h = json.loads(b[8:8 + n])
s, _ = h['model.layers.1.self_attn.q_proj.weight']['data_offsets']
struct.pack_into('<f', b, 8 + n + s, float('nan'))
open(p, 'wb').write(b)
PY
expect 2 "model.layers.1.self_attn.q_proj.weight' holds non-finite values" \
  "eval of a model with a NaN weight names the tensor, no 'perplexity: nan'" \
  -- "$qforge" eval --model "$work/n" --ppl "$work/tiny.txt"
cp "$M/model.safetensors" "$work/n/model.safetensors"
python3 - "$work/n/model.safetensors" <<'PY'
import sys
p = sys.argv[1]; b = open(p, 'rb').read()
key = b'"model.layers.1.self_attn.q_proj.weight":{"dtype":"F32"'
assert key in b, 'unexpected header layout'
open(p, 'wb').write(b.replace(key, key.replace(b'F32', b'I32')))
PY
expect 2 "stored as Int; a floating-point tensor is expected" "an I32 linear weight is refused" \
  -- "$qforge" eval --model "$work/n" --ppl "$work/tiny.txt"
cp "$M/model.safetensors" "$work/n/model.safetensors"
sed -i 's/"max_position_embeddings": [0-9]*/"max_position_embeddings": 1/' "$work/n/config.json"
expect 2 "max_position_embeddings is 1; perplexity needs windows of at least 2" \
  "a model with one position says why it has no perplexity" \
  -- "$qforge" eval --model "$work/n" --ppl "$work/tiny.txt"

# A checkpoint state that is not JSON is called malformed, not "other options" (D17).
mkdir -p "$work/s/.qforge-checkpoint" && echo 'garbage' > "$work/s/.qforge-checkpoint/state.json"
expect 2 "malformed checkpoint state" "a garbage state.json is called malformed" \
  -- "$qforge" "${R[@]}" --seqlen 64 --out "$work/s" --resume

# FIFOs where files are expected are refused, not waited on (D16).
cp -r "$M" "$work/fifo" && chmod -R u+w "$work/fifo" && rm "$work/fifo/config.json" &&
  mkfifo "$work/fifo/config.json"
expect 2 "not a regular file" "a FIFO config.json is refused" \
  -- "$qforge" eval --model "$work/fifo" --ppl "$C"
mkfifo "$work/choices.jsonl"
expect 2 "not a regular file" "a FIFO --choices is refused" \
  -- "$qforge" eval --model "$M" --choices "$work/choices.jsonl"
expect 2 "not a regular file" "a FIFO config.json is refused by quantize too" \
  -- "$qforge" quantize --model "$work/fifo" --method org.qforge.rtn --calib "$C" --nsamples 4 \
     --seqlen 64 --out "$work/fo"
mkfifo "$work/calib.txt"
expect 2 "not a regular file" "a FIFO --calib is refused" \
  -- "$qforge" quantize --model "$M" --method org.qforge.rtn --calib "$work/calib.txt" \
     --nsamples 4 --seqlen 64 --out "$work/i"
exit $fail
