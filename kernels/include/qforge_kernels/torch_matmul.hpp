// Header-only ATen glue for inference layers that run a PackedMatrix: the one
// place where the packed kernels meet LibTorch (threads via at::parallel_for,
// large batches via dequantize + LibTorch GEMM). Include it only in code that
// already uses ATen; the qforge_kernels library itself does not link LibTorch.
//
//   forward         rows <= kGemvMaxRows: the packed kernels (the tiles of
//                   outputs split between at::parallel_for's threads, which
//                   needs the including code compiled with OpenMP: link
//                   qforge_kernels_torch); more rows: W dequantized
//                   block by block into one reused buffer of about
//                   kBlockElements floats and multiplied with a LibTorch GEMM,
//                   so the transient memory stays bounded whatever the layer.
//   backward_input  grad_x = grad_y W, dequantize + GEMM for every batch.
//   dequantize      W [out, in] in float32, bit-identical on every ISA.
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>

namespace qforge::kernels::aten {

// Rows of x up to which forward runs the packed kernels. Measured with
// qforge_bench_gemv on the 2-core development machine (4096 x 4096, 4-bit,
// group 128; OpenBLAS): the kernels took 0.5 / 2.8 / 13 / 53 / 185 ms for
// 1 / 16 / 64 / 256 / 1024 rows, dequantize + GEMM 4.3 / 10.6 / 25 / 89 /
// 195 ms; they cross near 1500 rows. The kernels are FMA-bound like a GEMM
// at large batches, with an extraction overhead, so a faster BLAS (or more
// cores) moves the crossing down: 256 keeps the kernels for decoding and
// short prompts and leaves long prompts to the GEMM.
inline constexpr int64_t kGemvMaxRows = 256;
// Floats of W dequantized at a time for the GEMM path (4 MiB).
inline constexpr int64_t kBlockElements = int64_t{1} << 20;

// ParallelFor over at::parallel_for, for PackedMatrix's constructor.
inline ParallelFor parallel() {
  return [](int64_t begin, int64_t end, const std::function<void(int64_t, int64_t)>& f) {
    at::parallel_for(begin, end, 1, f);
  };
}

// Packs with LibTorch's threads.
inline PackedMatrix pack(const QuantizedWeight& w) { return PackedMatrix(w, parallel()); }

// Tiles per parallel task: at least 64 KiB of codes, so small layers stay on
// one thread.
inline int64_t tile_grain(const PackedMatrix& m) {
  const int64_t per_tile = static_cast<int64_t>(m.code_bytes()) / std::max<int64_t>(1, m.tiles());
  return std::max<int64_t>(1, (int64_t{64} << 10) / std::max<int64_t>(1, per_tile));
}

// y2 [rows, out] = x2 [rows, in] Wᵀ (+ bias) with the packed kernels.
// x2, y2: float32 on the CPU with unit stride along the last dimension;
// bias: float32 [out] contiguous, or undefined.
inline void gemv(const PackedMatrix& m, const at::Tensor& x2, at::Tensor y2,
                 const at::Tensor& bias) {
  const int64_t rows = x2.size(0);
  if (rows == 0) return;
  PackedMatrix::Input input;
  m.prepare(x2.data_ptr<float>(), rows, x2.stride(0), input);
  float* y = y2.data_ptr<float>();
  const int64_t ldy = y2.stride(0);
  const float* b = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const Isa isa = active_isa();
  // The threads take runs of `grain` tiles from a shared counter rather than
  // fixed halves: a worker that wakes up late (OMP_WAIT_POLICY=PASSIVE, a
  // busy machine) then costs only the tiles it did not take.
  const int64_t grain = tile_grain(m);
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), (m.tiles() + grain - 1) / grain);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t t0 = next.fetch_add(grain); t0 < m.tiles(); t0 = next.fetch_add(grain))
      m.gemm(input, t0, std::min(m.tiles(), t0 + grain), y, ldy, b, isa);
  });
}

// Calls f(first_output, outputs, wt) for consecutive blocks of whole tiles,
// wt = W[first : first + outputs]ᵀ ([in, outputs], row stride >= outputs)
// dequantized into one reused buffer of about kBlockElements floats.
template <class F>
void for_each_dequantized_block(const PackedMatrix& m, F&& f) {
  const int64_t in = m.in_features(), out = m.out_features();
  const int64_t per_block = std::min(
      m.tiles(), std::max<int64_t>(1, kBlockElements / (in * PackedMatrix::kTile)));
  const int64_t cols = per_block * PackedMatrix::kTile;
  const at::Tensor buffer = at::empty({in, cols}, at::kFloat);
  float* d = buffer.data_ptr<float>();
  const Isa isa = active_isa();
  for (int64_t t0 = 0; t0 < m.tiles(); t0 += per_block) {
    const int64_t t1 = std::min(m.tiles(), t0 + per_block);
    at::parallel_for(t0, t1, 1, [&](int64_t a, int64_t b) {
      m.dequantize_transposed(a, b, d + (a - t0) * PackedMatrix::kTile, cols, isa);
    });
    const int64_t first = t0 * PackedMatrix::kTile;
    const int64_t n = std::min(out, t1 * PackedMatrix::kTile) - first;
    f(first, n, buffer.narrow(1, 0, n));
  }
}

// The same product through dequantize + LibTorch GEMM.
inline void gemm_dequantized(const PackedMatrix& m, const at::Tensor& x2, at::Tensor y2,
                             const at::Tensor& bias) {
  if (x2.size(0) == 0) return;
  for_each_dequantized_block(m, [&](int64_t first, int64_t n, const at::Tensor& wt) {
    at::Tensor yb = y2.narrow(1, first, n);  // strided output: BLAS writes it in place
    if (bias.defined())
      at::addmm_out(yb, bias.narrow(0, first, n), x2, wt);
    else
      at::mm_out(yb, x2, wt);
  });
}

inline void forward(const PackedMatrix& m, const at::Tensor& x2, at::Tensor y2,
                    const at::Tensor& bias) {
  if (x2.size(0) <= kGemvMaxRows)
    gemv(m, x2, y2, bias);
  else
    gemm_dequantized(m, x2, y2, bias);
}

// gx2 [rows, in] = gy2 [rows, out] W.
inline void backward_input(const PackedMatrix& m, const at::Tensor& gy2, at::Tensor gx2) {
  if (gy2.size(0) == 0) return;
  for_each_dequantized_block(m, [&](int64_t first, int64_t n, const at::Tensor& wt) {
    const at::Tensor gyb = gy2.narrow(1, first, n);
    if (first == 0)
      at::mm_out(gx2, gyb, wt.t());
    else
      gx2.addmm_(gyb, wt.t());
  });
}

// dst: [out, in] contiguous float32.
inline void dequantize(const PackedMatrix& m, float* dst) {
  const int64_t in = m.in_features();
  at::parallel_for(0, m.tiles(), 1, [&](int64_t t0, int64_t t1) {
    m.dequantize_rows(t0, t1, dst + t0 * PackedMatrix::kTile * in, in);
  });
}

// Layer-level entry points over tensors the caller has validated: x [..., in]
// and y [..., out] float32 on the CPU with the same leading dimensions (any
// strides); bias float32 [out] contiguous or undefined.
inline void linear_forward(const PackedMatrix& m, const at::Tensor& x, at::Tensor y,
                           const at::Tensor& bias) {
  const at::Tensor x2 = x.reshape({-1, m.in_features()}).contiguous();
  const at::Tensor y2 = y.is_contiguous() ? y.view({-1, m.out_features()})
                                          : at::empty({x2.size(0), m.out_features()}, at::kFloat);
  forward(m, x2, y2, bias);
  if (!y.is_contiguous()) y.copy_(y2.view(y.sizes()));
}

inline void linear_backward_input(const PackedMatrix& m, const at::Tensor& gy, at::Tensor gx) {
  const at::Tensor gy2 = gy.reshape({-1, m.out_features()}).contiguous();
  const at::Tensor gx2 = gx.is_contiguous() ? gx.view({-1, m.in_features()})
                                            : at::empty({gy2.size(0), m.in_features()}, at::kFloat);
  backward_input(m, gy2, gx2);
  if (!gx.is_contiguous()) gx.copy_(gx2.view(gx.sizes()));
}

// w: float32 [out, in] on the CPU, any strides.
inline void dequantize_into(const PackedMatrix& m, at::Tensor w) {
  if (w.is_contiguous()) {
    dequantize(m, w.data_ptr<float>());
  } else {
    at::Tensor tmp = at::empty({m.out_features(), m.in_features()}, at::kFloat);
    dequantize(m, tmp.data_ptr<float>());
    w.copy_(tmp);
  }
}

}  // namespace qforge::kernels::aten
