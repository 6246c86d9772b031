#!/usr/bin/env bash
# Fuzzes the ELF dynamic-symbol reader (the registry's pre-load check) with libFuzzer.
#   tools/fuzz_elf_symbols.sh [SECONDS] [extra libFuzzer flags...]
# Builds tests/plugins/elf_fuzz standalone with clang (ASan + UBSan; nothing
# else needed) into ${QFORGE_FUZZ_BUILD:-build-fuzz-elf}, then runs for SECONDS
# (default 60) on ${QFORGE_FUZZ_JOBS:-1} worker(s), starting from the generated
# seed libraries (<build>/seeds) and the checked-in tests/plugins/elf_fuzz/corpus.
# New inputs go to <build>/corpus; a crash is written to <build>/artifacts/ and
# makes this script fail. Inputs are at most 16 KiB, so any single allocation
# over 64 MiB is reported as a finding (the reader sizes nothing from headers).
# Keep a reproducer by copying it into tests/plugins/elf_fuzz/corpus: CTest
# replays that folder in the main build (elf_symbols_fuzz.replay).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds="${1:-60}"
shift || true
build="${QFORGE_FUZZ_BUILD:-$root/build-fuzz-elf}"
jobs="${QFORGE_FUZZ_JOBS:-1}"

command -v clang++ >/dev/null || { echo "fuzz: clang++ not found (apt-get install clang)" >&2; exit 2; }
CC=clang CXX=clang++ cmake -S "$root/tests/plugins/elf_fuzz" -B "$build" -DQFORGE_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

mkdir -p "$build/corpus" "$build/artifacts"
args=(-max_total_time="$seconds" -dict="$root/tests/plugins/elf_fuzz/elf.dict"
      -artifact_prefix="$build/artifacts/" -print_final_stats=1 -max_len=16384 -malloc_limit_mb=64)
if [ "$jobs" -gt 1 ]; then args+=(-jobs="$jobs" -workers="$jobs"); fi
echo "fuzz: running elf_symbols_fuzz for ${seconds}s (corpus: $build/corpus)"
"$build/elf_symbols_fuzz" "${args[@]}" "$@" "$build/corpus" "$build/seeds" \
  "$root/tests/plugins/elf_fuzz/corpus"
