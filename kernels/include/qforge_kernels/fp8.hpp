// OCP FP8 E4M3FN (torch.float8_e4m3fn) and the FP8 linear layer on the CPU.
//
// Format: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities;
// S.1111.111 (0x7F, 0xFF) is NaN; the largest finite value is 448
// (0x7E); subnormals are m * 2^-9, m = 1..7. kFp8E4m3Table (256 entries) is
// the definition used everywhere.
//
// Encoding (fp8_e4m3_from_float and every SIMD encoder, bit-identical):
// round to nearest, ties to even mantissa; |v| >= 448 (infinities included)
// saturates to +-448, as compressed-tensors clamps to [-448, 448] before its
// cast; NaN -> 0x7F; -0 -> 0x80 (the sign is kept, also when a value rounds
// to zero).
//
// FP8 linear:
//   weights      e4m3 codes w[o, i] (no NaN: rejected at construction) and a
//                scale sw[o] per output channel (per tensor: the same value
//                for every o);
//   activations  per row r, dynamic: absmax = max_i |x[r, i]| (NaN ignored),
//                s_r = absmax / 448.0f, x̂[r, i] = e4m3(x[r, i] * (448.0f / absmax))
//                (a row of zeros: s_r = 0, inv = 0); or static with a given
//                s > 0: s_r = s, x̂ = e4m3(x * (1.0f / s)). The codes are the
//                same on every ISA (the same float ops, then the encoding above);
//   output       y[r, o] = (sum_i dec(x̂[r, i]) dec(w[o, i])) * (s_r * sw[o]) (+ bias[o]),
//                the sum in float32 with fused multiply-adds. Its order depends
//                on the ISA (lanes, register blocks), so outputs agree across
//                ISAs only within float32 rounding.
//
// Layout: outputs in tiles of 16 (the last zero-padded); per tile, per input
// i, the 16 outputs' codes (16 bytes), a tile's inputs contiguous. The SIMD
// kernels decode 16 codes with the e4m3 -> float16 bit placement (sign-extend
// the byte to 16 bits, shift left by 7, clear bit 14: the float16 of
// dec(w) * 2^-8, exact for every finite code) and F16C's conversion, and put
// the 2^8 back into the epilogue (exact). The portable kernel looks codes up
// in the table. Register blocks: 6 rows x 64 outputs (AVX-512), 4 x 16
// (AVX2), 4 x 16 (portable); one row: 1 x 64, 1 x 32, 1 x 16. Dispatch by
// Isa (packed_matrix.hpp: QFORGE_KERNEL, set_isa()). No threading inside:
// callers split rows (quantize_fp8) and tiles (Fp8Matrix::gemm);
// qforge_kernels/torch_w8a8.hpp does so for LibTorch users, and above a
// number of rows that depends on the ISA decodes W block by block for a
// LibTorch GEMM instead.
#pragma once

#include <qforge_kernels/int8_matmul.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace qforge::kernels {

inline constexpr float kFp8E4m3Max = 448.f;
inline constexpr uint8_t kFp8E4m3Nan = 0x7F;

namespace detail {
struct Fp8E4m3Table {
  float v[256] = {};
  constexpr Fp8E4m3Table() {
    for (int c = 0; c < 256; ++c) {
      const int e = (c >> 3) & 0xF, m = c & 7;
      float mag = 0.f;
      if (e == 15 && m == 7) {
        mag = std::numeric_limits<float>::quiet_NaN();
      } else {  // (e ? 1 + m/8 : m/8) * 2^(max(e, 1) - 7)
        mag = static_cast<float>(e != 0 ? 8 + m : m) / 8.f;
        for (int k = 7; k > (e != 0 ? e : 1); --k) mag /= 2.f;
        for (int k = 7; k < e; ++k) mag *= 2.f;
      }
      v[c] = (c & 0x80) != 0 ? -mag : mag;
    }
  }
};
}  // namespace detail

// dec(c) for every code c.
inline constexpr detail::Fp8E4m3Table kFp8E4m3Table;

inline float fp8_e4m3_to_float(uint8_t c) { return kFp8E4m3Table.v[c]; }
uint8_t fp8_e4m3_from_float(float f);

// Buffers with the SIMD kernels of `isa`, the same bits on every ISA:
// encode dst[k] = fp8_e4m3_from_float(src[k]), decode dst[k] =
// fp8_e4m3_to_float(src[k]) (NaN codes included), k < n.
void fp8_e4m3_encode(const float* src, int64_t n, uint8_t* dst, Isa isa);
void fp8_e4m3_decode(const uint8_t* src, int64_t n, float* dst, Isa isa);

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

struct Fp8Activations {
  int64_t rows = 0, in = 0;
  std::vector<uint8_t> codes;           // [rows][in]: x̂
  detail::AlignedVector<float> values;  // [rows][in]: dec(x̂), what the kernels read
  std::vector<float> scales;            // [rows]: s_r

  void resize(int64_t rows, int64_t in);
};

// Quantizes rows [r0, r1) of x (x[r * ldx + i], i < a.in) into `a`, sized by
// a.resize() first. static_scale > 0: that per-tensor scale; 0: dynamic per
// row. Thread-safe for disjoint row ranges.
void quantize_fp8(const float* x, int64_t ldx, int64_t r0, int64_t r1, float static_scale,
                  Fp8Activations& a, Isa isa);
// All `rows` rows with the active ISA.
Fp8Activations quantize_fp8(const float* x, int64_t rows, int64_t in, int64_t ldx,
                            float static_scale);

// ---------------------------------------------------------------------------
// Weight matrix
// ---------------------------------------------------------------------------

class Fp8Matrix {
 public:
  using Code = uint8_t;                 // what the constructor reads (e4m3 bytes)
  static constexpr int64_t kTile = 16;  // outputs per tile

  Fp8Matrix() = default;
  // w[o * ldw + i]: e4m3 codes of W [out, in]; scales[o]: sw[o]. Validates
  // (sizes, ldw >= in, no NaN code, finite scales) and repacks; throws
  // std::invalid_argument.
  Fp8Matrix(const uint8_t* w, int64_t out, int64_t in, int64_t ldw, const float* scales);

  bool empty() const { return out_ == 0; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t tiles() const { return tiles_; }
  // Bytes the kernels stream per call: codes and scales.
  size_t packed_bytes() const { return w_.size() + scales_.size() * sizeof(float); }

  uint8_t code(int64_t o, int64_t i) const {
    return w_[static_cast<size_t>((o / kTile * in_ + i) * kTile + o % kTile)];
  }
  float scale(int64_t o) const { return scales_[static_cast<size_t>(o)]; }

  // y[r * ldy + o] = (sum_i dec(x̂[r, i]) dec(w[o, i])) * (s_r * sw[o]) (+ bias[o])
  // for every row of x and the outputs of tiles [t0, t1). Thread-safe for
  // disjoint tile ranges.
  void gemm(const Fp8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias, Isa isa) const;
  void gemm(const Fp8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias) const {
    gemm(x, t0, t1, y, ldy, bias, active_isa());
  }

  // sw[o] * dec(w[o, i]) in float32 (one rounding: bit-identical on every
  // ISA), transposed, for the outputs of tiles [t0, t1):
  // dst[i * ld + (o - 16 t0)], 16 (t1 - t0) columns (zeros past out).
  void dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld, Isa isa) const;
  void dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld) const {
    dequantize_transposed(t0, t1, dst, ld, active_isa());
  }
  // The same row by row: dst[(o - o0) * ld + i] for o in [o0, o1).
  void dequantize_rows(int64_t o0, int64_t o1, float* dst, int64_t ld) const;

 private:
  int64_t in_ = 0, out_ = 0, tiles_ = 0;
  detail::AlignedVector<uint8_t> w_;  // [tiles][in][16]
  std::vector<float> scales_;         // [tiles * 16], 0 past out
};

}  // namespace qforge::kernels
