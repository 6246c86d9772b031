#!/usr/bin/env bash
# Forward throughput and peak RSS: stories260K and a synthetic Llama-3.2-1B shape.
# usage: tools/bench/forward.sh [build dir]   (QFORGE_SHARED overrides ../shared)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-${QFORGE_BUILD:-$root/build}}"
shared="${QFORGE_SHARED:-$root/../shared}"
bench="$build/bin/qforge_bench_forward"
# As the qforge CLI does: spinning OpenMP workers distort timings on a shared machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
# Each model twice: with glibc's allocation defaults (before) and as the CLI
# allocates (after; host/include/qforge_host/base/allocator.hpp).
weights="$(mktemp -d)"                # the synthetic 1B weights, written once
trap 'rm -rf "$weights"' EXIT
for malloc in --default-malloc ""; do
  echo "== stories260K ${malloc:-(as the CLI)}"
  "$bench" --model "$shared/models/stories260K" --seqlen 448 --decode 64 $malloc
  echo "== Llama-3.2-1B shape (random weights) ${malloc:-(as the CLI)}"
  "$bench" --synthetic llama-3.2-1b --keep "$weights/llama-1b" --seqlen 120 --decode 8 \
    --eval-batch 1 --batches 1 $malloc
done
