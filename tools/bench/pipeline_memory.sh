#!/usr/bin/env bash
# Peak RSS of `qforge quantize` (RTN through the whole pipeline) on a synthetic
# model of Llama-3.2-1B shape (random bf16 weights, written once), printed next
# to the model's size: the pipeline holds about one block, not the model.
# usage: tools/bench/pipeline_memory.sh [build dir] [work dir]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-${QFORGE_BUILD:-$root/build}}"
work="${2:-$(mktemp -d)}"
shared="${QFORGE_SHARED:-$root/../shared}"
model="$work/llama-3.2-1b-shape"
[ -f "$model/model.safetensors" ] || "$build/bin/qforge_bench_forward" --synthetic llama-3.2-1b --keep "$model" --write-only
# The synthetic model has no tokenizer: borrow Llama 3's (same vocabulary size).
cp -n "$shared/tokenizers/llama3/tokenizer.json" "$shared/tokenizers/llama3/tokenizer_config.json" "$model/" 2>/dev/null || true
rm -rf "$work/out"
/usr/bin/time -v "$build/bin/qforge" quantize --model "$model" --method org.qforge.rtn --set bits=4 \
  --calib "$shared/data/tinystories_v2_calib.txt" --nsamples 8 --seqlen 256 --out "$work/out" \
  --log-level warn > "$work/quantize.log" 2> "$work/time.log" &
# Sample the process: peak anonymous memory (what the pipeline really holds)
# and peak file-backed resident pages (mapped checkpoint pages being read or
# written, which the kernel can drop at will) besides the peak RSS.
anon=0 file=0
while kill -0 $! 2> /dev/null; do
  pid=$(pgrep -n -f "qforge quantize --model $model" || true)
  if [ -n "$pid" ] && [ -r "/proc/$pid/status" ]; then
    a=$(awk '/RssAnon/ {print $2}' "/proc/$pid/status" 2> /dev/null || echo 0)
    f=$(awk '/RssFile/ {print $2}' "/proc/$pid/status" 2> /dev/null || echo 0)
    [ "${a:-0}" -gt "$anon" ] && anon=$a
    [ "${f:-0}" -gt "$file" ] && file=$f
  fi
  sleep 0.2
done
wait $! || { echo "quantize failed:"; cat "$work/time.log"; exit 1; }
rss_kib=$(grep "Maximum resident set size" "$work/time.log" | awk '{print $NF}')
model_bytes=$(stat -c %s "$model/model.safetensors")
fp32_mib=$(( model_bytes * 2 / 1048576 ))
echo "model: Llama-3.2-1B shape, $(( model_bytes / 1048576 )) MiB as bf16 on disk, ${fp32_mib} MiB as float32 (compute dtype)"
echo "quantize (RTN 4-bit g128, 8x256 calibration tokens): peak RSS $(( rss_kib / 1024 )) MiB = $(( rss_kib * 100 / 1024 / fp32_mib ))% of the float32 model"
echo "  of which at most $(( anon / 1024 )) MiB anonymous (held by qforge) and $(( file / 1024 )) MiB mapped file pages (reclaimable)"
echo "wall time: $(grep "Elapsed (wall clock)" "$work/time.log" | awk '{print $NF}')"
