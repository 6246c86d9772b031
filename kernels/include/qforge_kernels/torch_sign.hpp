// Where the sign kernels (sign_chain.hpp) meet LibTorch, header-only: the
// products of a SignChain on [rows, features] float32 tensors, as the binary
// inference layer (plugins/dbf) runs them and the benchmark times them.
//
//   forward / backward_input   rows <= kSignKernelMaxRows: the sign kernels
//                              (each plane's rows split between
//                              at::parallel_for's threads); above, each plane
//                              unpacked to ±1.0f ~4 MiB at a time into one
//                              reused buffer and multiplied with LibTorch's GEMM
//   dequantize                 W = diag(s_L) S_L ⋯ S_1 diag(s_0), float32
#pragma once

#include <qforge_kernels/sign_chain.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace qforge::kernels::aten {

// Above this many rows, unpack + GEMM beats the sign kernels (the DBF batch
// table of tools/bench/gemv_bench.cpp).
inline constexpr int64_t kSignKernelMaxRows = 32;

// Scale vector l of the chain, borrowed.
inline at::Tensor sign_scale(const SignChain& c, size_t l) {
  const std::vector<float>& s = c.scale(l);
  return at::from_blob(const_cast<float*>(s.data()), {static_cast<int64_t>(s.size())}, at::kFloat);
}

// Plane l as ±1.0f, [rows, cols].
inline at::Tensor sign_unpacked(const SignChain& c, size_t l) {
  const SignPlane& p = c.plane(l);
  at::Tensor m = at::empty({p.rows(), p.cols()}, at::kFloat);
  at::parallel_for(0, p.rows(), 64, [&](int64_t a, int64_t b) {
    p.unpack(a, b, m.data_ptr<float>() + a * p.cols(), p.cols());
  });
  return m;
}

// h · S_lᵀ, or h · S_l when `transposed`, with S_l unpacked block by block.
inline at::Tensor sign_times_plane(const SignChain& c, const at::Tensor& h, size_t l,
                                   bool transposed) {
  const SignPlane& p = c.plane(l);
  const int64_t block = std::max<int64_t>(1, kBlockElements / p.cols());
  at::Tensor tile = at::empty({std::min(block, p.rows()), p.cols()}, at::kFloat);
  at::Tensor out = transposed ? at::zeros({h.size(0), p.cols()}, at::kFloat)
                              : at::empty({h.size(0), p.rows()}, at::kFloat);
  for (int64_t o0 = 0; o0 < p.rows(); o0 += block) {
    const int64_t n = std::min(block, p.rows() - o0);
    at::parallel_for(0, n, 64, [&](int64_t a, int64_t b) {
      p.unpack(o0 + a, o0 + b, tile.data_ptr<float>() + a * p.cols(), p.cols());
    });
    const at::Tensor t = tile.narrow(0, 0, n);
    if (transposed)
      out.addmm_(h.narrow(1, o0, n), t);
    else
      out.narrow(1, o0, n).copy_(h.mm(t.t()));
  }
  return out;
}

// y = chain(x) for x [rows, in], y [rows, out], both contiguous float32:
// through the sign kernels, through unpack + GEMM, or the faster for the rows.
inline void sign_forward_kernel(const SignChain& c, const at::Tensor& x, at::Tensor y) {
  c.forward(x.data_ptr<float>(), x.size(0), c.in_features(), y.data_ptr<float>(),
            c.out_features(), parallel());
}
inline void sign_forward_gemm(const SignChain& c, const at::Tensor& x, at::Tensor y) {
  at::Tensor h = x * sign_scale(c, 0);
  for (size_t l = 0; l < c.planes(); ++l) h = sign_times_plane(c, h, l, false) * sign_scale(c, l + 1);
  if (!c.bias().empty())
    h.add_(at::from_blob(const_cast<float*>(c.bias().data()), {c.out_features()}, at::kFloat));
  y.copy_(h);
}
inline void sign_forward(const SignChain& c, const at::Tensor& x, at::Tensor y) {
  if (x.size(0) <= kSignKernelMaxRows)
    sign_forward_kernel(c, x, y);
  else
    sign_forward_gemm(c, x, y);
}

// grad_x = grad_y · W for grad_y [rows, out], grad_x [rows, in], contiguous.
inline void sign_backward_input(const SignChain& c, const at::Tensor& gy, at::Tensor gx) {
  if (gy.size(0) <= kSignKernelMaxRows) {
    c.backward_input(gy.data_ptr<float>(), gy.size(0), c.out_features(), gx.data_ptr<float>(),
                     c.in_features(), parallel());
    return;
  }
  at::Tensor g = gy * sign_scale(c, c.planes());
  for (size_t l = c.planes(); l-- > 0;) g = sign_times_plane(c, g, l, true) * sign_scale(c, l);
  gx.copy_(g);
}

// W [out, in] = diag(s_L) S_L diag(s_(L−1)) ⋯ S_1 diag(s_0).
inline at::Tensor sign_dequantize(const SignChain& c) {
  at::Tensor m = sign_unpacked(c, 0) * sign_scale(c, 0).unsqueeze(0);
  for (size_t l = 1; l < c.planes(); ++l) m = (sign_unpacked(c, l) * sign_scale(c, l).unsqueeze(0)).mm(m);
  return m * sign_scale(c, c.planes()).unsqueeze(1);
}

}  // namespace qforge::kernels::aten
