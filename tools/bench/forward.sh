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
echo "== stories260K"
"$bench" --model "$shared/models/stories260K" --seqlen 256 --decode 64
echo "== Llama-3.2-1B shape (random weights)"
"$bench" --synthetic llama-3.2-1b --seqlen 128 --decode 8
