// FP8 E4M3: the scalar encoder, activation quantization, Fp8Matrix
// construction and dispatch to the per-ISA kernels (fp8.hpp).
#include <qforge_kernels/fp8.hpp>

#include "fp8_args.inc"
#include "dispatch.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace qforge::kernels {
namespace detail {
float row_absmax(const float* x, int64_t n, Isa isa);  // int8_matmul.cpp
}  // namespace detail

namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("Fp8Matrix: " + message);
}

const detail::Fp8Kernels& kernels(Isa isa) {
  return detail::table_for(isa, QFORGE_ISA_TABLES(fp8));
}

}  // namespace

uint8_t fp8_e4m3_from_float(float f) { return detail::fp8_encode_one(f); }

void fp8_e4m3_encode(const float* src, int64_t n, uint8_t* dst, Isa isa) {
  if (n > 0) kernels(isa).encode(src, n, 1.0f, dst);
}

void fp8_e4m3_decode(const uint8_t* src, int64_t n, float* dst, Isa isa) {
  if (n > 0) kernels(isa).decode(src, n, dst);
}

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

void Fp8Activations::resize(int64_t n_rows, int64_t n_in) {
  if (n_rows < 0 || n_in < 1) throw std::invalid_argument("Fp8Activations: bad size");
  rows = n_rows;
  in = n_in;
  codes.assign(static_cast<size_t>(rows * in), 0);
  values.assign(static_cast<size_t>(rows * in), 0.f);
  scales.assign(static_cast<size_t>(rows), 0.f);
}

void quantize_fp8(const float* x, int64_t ldx, int64_t r0, int64_t r1, float static_scale,
                  Fp8Activations& a, Isa isa) {
  if (r0 < 0 || r1 > a.rows || r0 > r1) throw std::invalid_argument("quantize_fp8: bad rows");
  if (!(static_scale >= 0.f) || std::isinf(static_scale))
    throw std::invalid_argument("quantize_fp8: a static scale must be finite and > 0");
  const detail::Fp8Kernels& k = kernels(isa);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * ldx;
    const detail::RowScale rs = detail::row_scale(
        static_scale, kFp8E4m3Max, [&] { return detail::row_absmax(xr, a.in, isa); });
    uint8_t* codes = a.codes.data() + r * a.in;
    k.encode(xr, a.in, rs.inv, codes);
    k.decode(codes, a.in, a.values.data() + r * a.in);
    a.scales[static_cast<size_t>(r)] = rs.s;
  }
}

Fp8Activations quantize_fp8(const float* x, int64_t rows, int64_t in, int64_t ldx,
                            float static_scale) {
  Fp8Activations a;
  a.resize(rows, in);
  quantize_fp8(x, ldx, 0, rows, static_scale, a, active_isa());
  return a;
}

// ---------------------------------------------------------------------------
// Weight matrix
// ---------------------------------------------------------------------------

Fp8Matrix::Fp8Matrix(const uint8_t* w, int64_t out, int64_t in, int64_t ldw, const float* scales) {
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  if (in < 1 || in > kMax || out < 1 || out > kMax)
    bad("in_features and out_features must be in [1, 2^31 - 1]");
  if (ldw < in) bad("ldw must be >= in_features");
  if (w == nullptr || scales == nullptr) bad("weights and scales are required");
  in_ = in;
  out_ = out;
  tiles_ = (out + kTile - 1) / kTile;
  w_.assign(static_cast<size_t>(tiles_ * in * kTile), 0);
  scales_.assign(static_cast<size_t>(tiles_ * kTile), 0.f);
  for (int64_t o = 0; o < out; ++o) {
    if (!std::isfinite(scales[o])) bad("scale " + std::to_string(o) + " is not finite");
    scales_[static_cast<size_t>(o)] = scales[o];
    uint8_t* dst = w_.data() + (o / kTile) * in * kTile + o % kTile;
    for (int64_t i = 0; i < in; ++i) {
      const uint8_t c = w[o * ldw + i];
      if ((c & 0x7F) == kFp8E4m3Nan)
        bad("weight [" + std::to_string(o) + ", " + std::to_string(i) + "] is NaN");
      dst[i * kTile] = c;
    }
  }
}

void Fp8Matrix::gemm(const Fp8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
                     const float* bias, Isa isa) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (x.in != in_) bad("activations were quantized for another in_features");
  if (x.rows == 0 || t0 == t1) return;
  const detail::Fp8View v{w_.data(), scales_.data(), out_, tiles_, in_};
  const detail::Fp8Call c{x.rows, x.values.data(), x.in, x.scales.data(), y, ldy, bias};
  kernels(isa).gemm(v, c, t0, t1);
}

void Fp8Matrix::dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld,
                                      Isa isa) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (ld < (t1 - t0) * kTile) bad("leading dimension too small");
  if (t0 == t1) return;
  const detail::Fp8View v{w_.data(), scales_.data(), out_, tiles_, in_};
  kernels(isa).dequant_t(v, t0, t1, dst, ld);
}

void Fp8Matrix::dequantize_rows(int64_t o0, int64_t o1, float* dst, int64_t ld) const {
  if (o0 < 0 || o1 > out_ || o0 > o1) bad("output range out of bounds");
  std::vector<float> tile(static_cast<size_t>(in_ * kTile));
  for (int64_t o = o0; o < o1;) {
    const int64_t t = o / kTile, end = std::min(o1, (t + 1) * kTile);
    dequantize_transposed(t, t + 1, tile.data(), kTile);
    for (; o < end; ++o)
      for (int64_t i = 0; i < in_; ++i) dst[(o - o0) * ld + i] = tile[i * kTile + o % kTile];
  }
}

}  // namespace qforge::kernels
