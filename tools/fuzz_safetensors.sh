#!/usr/bin/env bash
# Fuzzes the safetensors header and index parsers with libFuzzer.
#   tools/fuzz_safetensors.sh [SECONDS] [extra libFuzzer flags...]
# Builds tests/io/fuzz standalone with clang (ASan + UBSan; no LibTorch needed)
# into ${QFORGE_FUZZ_BUILD:-build-fuzz}, then runs for SECONDS (default 60)
# on ${QFORGE_FUZZ_JOBS:-1} worker(s), starting from the checked-in seeds in
# tests/io/fuzz/corpus. New inputs go to <build>/corpus (the seeds stay
# untouched); a crash is written to <build>/artifacts/ and makes this script
# fail. Keep a reproducer by copying it into tests/io/fuzz/corpus: CTest replays
# that folder in the main build (safetensors_fuzz.replay).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
build="${QFORGE_FUZZ_BUILD:-$root/build-fuzz}"
jobs="${QFORGE_FUZZ_JOBS:-1}"

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)" >&2; exit 2; }
CC=clang CXX=clang++ cmake -S "$root/tests/io/fuzz" -B "$build" -DQFORGE_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

mkdir -p "$build/corpus" "$build/artifacts"
args=(-max_total_time="$seconds" -dict="$root/tests/io/fuzz/safetensors.dict"
      -artifact_prefix="$build/artifacts/" -print_final_stats=1 -max_len=4096)
if [ "$jobs" -gt 1 ]; then args+=(-jobs="$jobs" -workers="$jobs"); fi
echo "fuzz: running safetensors_fuzz for ${seconds}s (corpus: $build/corpus)"
"$build/safetensors_fuzz" "${args[@]}" "$@" "$build/corpus" "$root/tests/io/fuzz/corpus"
