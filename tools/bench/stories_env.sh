# Sourced by the quality scripts (tools/bench/*_quality.sh) with their
# arguments: [build dir] [shared dir]. Sets Q (the qforge binary), M
# (stories260K), D (the shared data), work (a temporary directory removed
# at exit), calib, field and gptq_baselines (below); exits 2 when the build
# or the shared data is missing.
build="${1:-build}"
shared="${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/shared}"
Q="$build/bin/qforge" M="$shared/models/stories260K" D="$shared/data"
[ -x "$Q" ] || { echo "no $Q: build first (tools/build.sh)" >&2; exit 2; }
[ -d "$M" ] || { echo "no $M: the shared data must sit beside the project" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The calibration every quality table uses, and a JSON field of stdin to 4 decimals.
calib=(--calib "$D/tinystories_v2_calib.txt" --nsamples 128 --seqlen 256 --seed 0)
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print('%.4f' % d$1)"; }

# The GPTQ 2- and 3-bit g32 rows (asymmetric, act-order; min/max and with the
# MSE clipping search) the low-bit tables compare against, through the
# caller's `row LABEL BITS ARGS...`; effective bits b + (16 + b)/32.
gptq_baselines() {
  local b bits
  for b in 2 3; do
    bits=$(python3 -c "print('%.3f' % ($b + (16 + $b) / 32))")
    row "GPTQ $b-bit g32 asym act-order" "$bits" --method org.qforge.gptq --set bits=$b \
      --set group_size=32 --set sym=false --set desc_act=true --save-format gptq
    row "GPTQ $b-bit g32 asym act-order, mse" "$bits" --method org.qforge.gptq --set bits=$b \
      --set group_size=32 --set sym=false --set desc_act=true --set mse=true --save-format gptq
  done
}

# The figures of a model directory read back from disk: perplexity of
# tinystories_valid.txt (windows of 512) and story_choices.jsonl accuracy.
ppl() { "$Q" eval --model "$1" --ppl "$D/tinystories_valid.txt" --json 2>/dev/null | field '["perplexity"]["ppl"]'; }
acc() { "$Q" eval --model "$1" --choices "$D/story_choices.jsonl" --json 2>/dev/null | field '["choices"]["acc"]'; }

# quality_row LABEL ARGS...: `qforge quantize` of stories260K with the common
# calibration and ARGS into $work/q (the command echoed to stderr), then one
# table row: label, ppl, acc, distance from $fp, seconds (and the arguments
# when show_args=1).
quality_row() {
  local label="$1"; shift
  echo "+ $Q quantize --model $M ${calib[*]} $* --out OUT" >&2
  local t0=$SECONDS
  "$Q" quantize --model "$M" "${calib[@]}" "$@" --out "$work/q" > /dev/null 2>&1
  local secs=$((SECONDS - t0)) p
  p=$(ppl "$work/q")
  local line="| $label | $p | $(acc "$work/q") | $(python3 -c "print('%+.2f %%' % (100 * ($p / $fp - 1)))") | $secs |"
  [ "${show_args:-0}" = 1 ] && line="$line \`$*\` |"
  echo "$line"
  rm -rf "$work/q"
}
