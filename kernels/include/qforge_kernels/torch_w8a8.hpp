// Header-only ATen glue for W8A8 linear layers: Int8Linear (int8 weights,
// int8 activations, int8_matmul.hpp) and Fp8Linear (e4m3 weights and
// activations, fp8.hpp). Include it only in code that already uses ATen and
// is compiled with OpenMP (link qforge_kernels_torch): at::parallel_for runs
// the activation quantization over rows and the kernels over output tiles.
//
//   Int8Linear(weight, scale, bias, input_scale)
//     weight       int8 [out, in] (any strides), codes in [-128, 127];
//     scale        float32 with out elements (per output channel, e.g.
//                  compressed-tensors' [out, 1]) or one (per tensor);
//     bias         float32 [out] or undefined;
//     input_scale  static per-tensor activation scale (> 0), or nullopt for
//                  dynamic per-token scales (absmax / 127).
//   Fp8Linear(weight, scale, bias, input_scale): the same with weight uint8
//     [out, in] holding float8_e4m3fn bits (no NaN) and dynamic scales
//     absmax / 448.
//
//   forward(x)               x float32 [..., in] on the CPU -> y [..., out].
//                            Int8Linear: always the INT8 kernels (AVX2 and
//                            AVX-512 VNNI beat LibTorch's float32 GEMM at
//                            every batch size measured, 1 to 512 rows).
//                            Fp8Linear: the FP8 kernels up to
//                            fp8_kernel_max_rows(isa) rows (forward_kernels);
//                            above, W decoded block by block (about
//                            kBlockElements floats) and multiplied with
//                            LibTorch's GEMM on the rounded activations, then
//                            scaled per row (forward_gemm).
//   backward_input(grad_y)   grad_x = grad_y W [..., in], W dequantized block
//                            by block + LibTorch GEMM.
//   dequantize()             W = scale * code as float32 [out, in] (one
//                            rounding: bit-identical on every ISA).
// The kernels follow QFORGE_KERNEL / set_isa() (packed_matrix.hpp).
#pragma once

#include <qforge_kernels/fp8.hpp>
#include <qforge_kernels/int8_matmul.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace qforge::kernels::aten {

// Rows of x up to which Fp8Linear::forward runs the FP8 kernels of `isa`;
// above, decode + LibTorch GEMM. Measured with qforge_bench_w8a8 on the
// 2-core development machine (4096 x 4096, OpenBLAS): the AVX-512 kernels
// beat decode + GEMM (and float32 GEMM) at every batch from 1 to 1024 rows;
// the AVX2 ones up to 16-32 rows, the portable ones up to 4.
inline int64_t fp8_kernel_max_rows(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return std::numeric_limits<int64_t>::max();
    case Isa::kAvx2: return 32;
    default: return 4;
  }
}

namespace w8a8 {

[[noreturn]] inline void bad(const std::string& what) { throw std::invalid_argument(what); }

// Calls f(t0, t1) on runs of `grain` tiles that at::parallel_for's threads
// take from a shared counter (a late thread costs only what it did not take).
template <class F>
void for_tiles(int64_t tiles, int64_t grain, const F& f) {
  const int64_t tasks = std::min<int64_t>(at::get_num_threads(), (tiles + grain - 1) / grain);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    for (int64_t t0 = next.fetch_add(grain); t0 < tiles; t0 = next.fetch_add(grain))
      f(t0, std::min(tiles, t0 + grain));
  });
}

// Tiles per task: at least 64 KiB of weights, a multiple of 4 (the AVX-512
// kernels' register block).
inline int64_t tile_grain(int64_t bytes_per_tile) {
  const int64_t g =
      std::max<int64_t>(1, (int64_t{64} << 10) / std::max<int64_t>(1, bytes_per_tile));
  return (g + 3) / 4 * 4;
}

// Rows per quantization task: at least 16K elements.
inline int64_t row_grain(int64_t in) { return std::max<int64_t>(1, (int64_t{16} << 10) / in); }

// sw[o] for o < out from a float tensor with out elements or one.
inline std::vector<float> channel_scales(const at::Tensor& scale, int64_t out) {
  if (!scale.defined() || (scale.numel() != out && scale.numel() != 1))
    bad("W8A8 linear: the weight scale needs " + std::to_string(out) + " elements or 1");
  const at::Tensor s = scale.to(at::kFloat).contiguous().reshape({-1});
  std::vector<float> v(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) v[o] = s.data_ptr<float>()[s.numel() == 1 ? 0 : o];
  return v;
}

inline at::Tensor weight_2d(const at::Tensor& w, at::ScalarType type, const char* what) {
  if (!w.defined() || w.dim() != 2 || w.scalar_type() != type || !w.device().is_cpu())
    bad(std::string("W8A8 linear: the weight must be a 2-D ") + what + " CPU tensor");
  return w.contiguous();
}

inline at::Tensor bias_of(const at::Tensor& bias, int64_t out) {
  if (!bias.defined()) return bias;
  if (bias.numel() != out) bad("W8A8 linear: the bias needs " + std::to_string(out) + " elements");
  return bias.to(at::kFloat).contiguous().reshape({out});
}

inline float static_scale(std::optional<float> s) {
  if (s && !(*s > 0.f && *s < std::numeric_limits<float>::infinity()))
    bad("W8A8 linear: a static input scale must be finite and > 0");
  return s ? *s : 0.f;
}

// x [..., in] as float32 [rows, in], contiguous.
inline at::Tensor rows_of(const at::Tensor& x, int64_t in, const char* what) {
  if (!x.defined() || x.dim() < 1 || x.size(-1) != in || !x.device().is_cpu())
    bad(std::string("W8A8 linear: ") + what + " must be a CPU tensor [..., " + std::to_string(in) +
        "]");
  return x.to(at::kFloat).reshape({-1, in}).contiguous();
}

inline std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> v(sizes.begin(), sizes.end());
  v.back() = last;
  return v;
}

// fill(o0, o1, dst): W[o0 : o1] in float32 at row stride in, from a
// matrix's dequantize_rows.
template <class M>
struct RowsOf {
  const M* m;
  void operator()(int64_t o0, int64_t o1, float* dst) const {
    m->dequantize_rows(o0, o1, dst, m->in_features());
  }
};

// Calls f(first, n, block) for consecutive blocks of whole tiles, block =
// W[first : first + n] in float32 [n, in] (one reused buffer of about
// kBlockElements floats) filled by fill(o0, o1, dst) in parallel over tiles.
template <class Fill, class F>
void for_each_weight_block(int64_t out, int64_t in, const Fill& fill, const F& f) {
  constexpr int64_t kTile = 16;
  const int64_t tiles = (out + kTile - 1) / kTile;
  const int64_t per_block = std::min(tiles, std::max<int64_t>(1, kBlockElements / (in * kTile)));
  const at::Tensor buffer = at::empty({per_block * kTile, in}, at::kFloat);
  float* d = buffer.data_ptr<float>();
  for (int64_t t0 = 0; t0 < tiles; t0 += per_block) {
    const int64_t t1 = std::min(tiles, t0 + per_block), first = t0 * kTile;
    at::parallel_for(t0, t1, 1, [&](int64_t a, int64_t b) {
      fill(a * kTile, std::min(out, b * kTile), d + (a - t0) * kTile * in);
    });
    const int64_t n = std::min(out, t1 * kTile) - first;
    f(first, n, buffer.narrow(0, 0, n));
  }
}

// grad_x [rows, in] = grad_y [rows, out] W.
template <class Fill>
at::Tensor backward_input(const at::Tensor& gy2, int64_t out, int64_t in, const Fill& fill) {
  at::Tensor gx = at::zeros({gy2.size(0), in}, at::kFloat);
  if (gy2.size(0) == 0) return gx;
  for_each_weight_block(out, in, fill, [&](int64_t first, int64_t n, const at::Tensor& w) {
    gx.addmm_(gy2.narrow(1, first, n), w);
  });
  return gx;
}

template <class Fill>
at::Tensor dequantize(int64_t out, int64_t in, const Fill& fill) {
  at::Tensor w = at::empty({out, in}, at::kFloat);
  float* d = w.data_ptr<float>();
  at::parallel_for(0, (out + 15) / 16, 1, [&](int64_t t0, int64_t t1) {
    fill(t0 * 16, std::min(out, t1 * 16), d + t0 * 16 * in);
  });
  return w;
}

// What Int8Linear and Fp8Linear share: the matrix (Int8Matrix or Fp8Matrix)
// built from checked tensors, the bias, the static input scale, and what the
// decoded weight serves (backward_input, dequantize).
template <class Matrix>
class LinearBase {
 public:
  int64_t in_features() const { return matrix_.in_features(); }
  int64_t out_features() const { return matrix_.out_features(); }
  const Matrix& matrix() const { return matrix_; }
  // The static input scale, 0 when dynamic.
  float input_scale() const { return input_scale_; }

  at::Tensor backward_input(const at::Tensor& grad_y) const {
    const at::Tensor gy2 = rows_of(grad_y, out_features(), "grad_y");
    return w8a8::backward_input(gy2, out_features(), in_features(), fill())
        .view(with_last(grad_y.sizes(), in_features()));
  }
  at::Tensor dequantize() const { return w8a8::dequantize(out_features(), in_features(), fill()); }

 protected:
  LinearBase(const at::Tensor& weight, at::ScalarType dtype, const char* what,
             const at::Tensor& scale, const at::Tensor& bias, std::optional<float> input_scale)
      : input_scale_(static_scale(input_scale)) {
    const at::Tensor w = weight_2d(weight, dtype, what);
    const std::vector<float> s = channel_scales(scale, w.size(0));
    matrix_ = Matrix(static_cast<const typename Matrix::Code*>(w.data_ptr()), w.size(0), w.size(1),
                     w.size(1), s.data());
    bias_ = bias_of(bias, w.size(0));
  }
  RowsOf<Matrix> fill() const { return {&matrix_}; }
  const float* bias_data() const { return bias_.defined() ? bias_.data_ptr<float>() : nullptr; }

  Matrix matrix_;
  at::Tensor bias_;
  float input_scale_ = 0.f;
};

}  // namespace w8a8

class Int8Linear : public w8a8::LinearBase<Int8Matrix> {
 public:
  Int8Linear(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& bias = {},
             std::optional<float> input_scale = std::nullopt)
      : LinearBase(weight, at::kChar, "int8", scale, bias, input_scale) {}

  at::Tensor forward(const at::Tensor& x) const {
    const int64_t in = in_features(), out = out_features();
    const at::Tensor x2 = w8a8::rows_of(x, in, "x");
    const int64_t rows = x2.size(0);
    at::Tensor y = at::empty({rows, out}, at::kFloat);
    if (rows > 0) {
      const Int8Path path = active_int8_path();
      Int8Activations a;
      a.resize(rows, in);
      at::parallel_for(0, rows, w8a8::row_grain(in), [&](int64_t r0, int64_t r1) {
        quantize_int8(x2.data_ptr<float>(), in, r0, r1, input_scale_, a, path);
      });
      const float* b = bias_data();
      float* yp = y.data_ptr<float>();
      w8a8::for_tiles(matrix_.tiles(), w8a8::tile_grain(16 * matrix_.padded_in()),
                      [&](int64_t t0, int64_t t1) { matrix_.gemm(a, t0, t1, yp, out, b, path); });
    }
    return y.view(w8a8::with_last(x.sizes(), out));
  }
};

class Fp8Linear : public w8a8::LinearBase<Fp8Matrix> {
 public:
  Fp8Linear(const at::Tensor& weight, const at::Tensor& scale, const at::Tensor& bias = {},
            std::optional<float> input_scale = std::nullopt)
      : LinearBase(weight, at::kByte, "uint8 (float8_e4m3fn bits)", scale, bias, input_scale) {}

  at::Tensor forward(const at::Tensor& x) const {
    const int64_t rows = x.numel() / std::max<int64_t>(1, in_features());
    return rows <= fp8_kernel_max_rows(active_isa()) ? forward_kernels(x) : forward_gemm(x);
  }
  // forward() through the FP8 kernels whatever the batch.
  at::Tensor forward_kernels(const at::Tensor& x) const {
    return run(x, [&](const Fp8Activations& a, at::Tensor& y, Isa isa) {
      const float* b = bias_data();
      float* yp = y.data_ptr<float>();
      w8a8::for_tiles(
          matrix_.tiles(), w8a8::tile_grain(16 * in_features()),
          [&](int64_t t0, int64_t t1) { matrix_.gemm(a, t0, t1, yp, out_features(), b, isa); });
    });
  }
  // forward() through decode + LibTorch GEMM whatever the batch:
  // y = s_r * (dec(x̂) (sw dec(W))ᵀ) + bias, Wᵀ decoded by blocks of whole
  // tiles into one reused buffer of about kBlockElements floats.
  at::Tensor forward_gemm(const at::Tensor& x) const {
    return run(x, [&](Fp8Activations& a, at::Tensor& y, Isa isa) {
      const int64_t in = in_features(), out = out_features(), tiles = matrix_.tiles();
      const int64_t per_block =
          std::min(tiles, std::max<int64_t>(1, kBlockElements / (in * Fp8Matrix::kTile)));
      const int64_t cols = per_block * Fp8Matrix::kTile;
      const at::Tensor wt = at::empty({in, cols}, at::kFloat);
      const at::Tensor xv = at::from_blob(a.values.data(), {a.rows, in}, at::kFloat);
      for (int64_t t0 = 0; t0 < tiles; t0 += per_block) {
        const int64_t t1 = std::min(tiles, t0 + per_block), first = t0 * Fp8Matrix::kTile;
        at::parallel_for(t0, t1, 1, [&](int64_t b, int64_t e) {
          matrix_.dequantize_transposed(b, e, wt.data_ptr<float>() + (b - t0) * Fp8Matrix::kTile,
                                        cols, isa);
        });
        const int64_t n = std::min(out, t1 * Fp8Matrix::kTile) - first;
        at::Tensor yb = y.narrow(1, first, n);  // strided output: BLAS writes it in place
        at::mm_out(yb, xv, wt.narrow(1, 0, n));
      }
      y.mul_(at::from_blob(a.scales.data(), {a.rows, 1}, at::kFloat));
      if (bias_.defined()) y.add_(bias_);
    });
  }


 private:
  // Quantizes x's rows, then multiply(a, y [rows, out], isa).
  template <class Multiply>
  at::Tensor run(const at::Tensor& x, const Multiply& multiply) const {
    const int64_t in = in_features();
    const at::Tensor x2 = w8a8::rows_of(x, in, "x");
    const int64_t rows = x2.size(0);
    at::Tensor y = at::empty({rows, out_features()}, at::kFloat);
    if (rows > 0) {
      const Isa isa = active_isa();
      Fp8Activations a;
      a.resize(rows, in);
      at::parallel_for(0, rows, w8a8::row_grain(in), [&](int64_t r0, int64_t r1) {
        quantize_fp8(x2.data_ptr<float>(), in, r0, r1, input_scale_, a, isa);
      });
      multiply(a, y, isa);
    }
    return y.view(w8a8::with_last(x.sizes(), out_features()));
  }
};

}  // namespace qforge::kernels::aten
