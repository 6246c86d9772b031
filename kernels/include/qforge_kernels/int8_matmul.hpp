// W8A8 INT8 linear layers on the CPU: int8 weights with a float scale per
// output channel, activations quantized to int8 per row (token) at run time,
// products accumulated exactly in int32.
//
// Numerics (identical bits on every path):
//   weights      codes q_w[o, i] in [-128, 127], scale sw[o] (a per-tensor
//                scale is the same value for every o);
//   activations  per row r, either dynamic:
//                  absmax = max_i |x[r, i]|, s_r = absmax / 127.0f,
//                  inv = 127.0f / absmax,
//                  q_x[r, i] = clamp(nearbyintf(x[r, i] * inv), -127, 127)
//                (a row of zeros: s_r = 0 and codes 0), or static (per
//                tensor, from calibration) with a given s > 0:
//                  s_r = s, q_x[r, i] = clamp(nearbyintf(x[r, i] * (1.0f / s)), -127, 127).
//                Every path does these float operations in this order, in
//                float32, without fused multiply-adds, rounding half to even
//                (the default rounding mode), so codes and scales are the
//                same everywhere. The codes stop at -127, which keeps
//                x * sign(w) inside int8 for the AVX2 kernel. Inputs should
//                be finite: a NaN becomes -127, an infinite absmax makes s_r
//                infinite, one below 127 / FLT_MAX overflows inv
//                (deterministic on every path, meaningless).
//   output       acc[r, o] = sum_i q_x[r, i] q_w[o, i] exactly in int32
//                (in_features <= kMaxInFeatures = 2^17 keeps |acc| < 2^31), then
//                  y[r, o] = float(acc[r, o]) * (s_r * sw[o])  (+ bias[o])
//                in float32 in exactly that order.
//
// Layout: the outputs are cut into tiles of 16 (the last zero-padded), the
// inputs padded with zeros to a multiple of 64 (padded_in()). Per tile, per
// group of 4 consecutive inputs: 16 lanes x 4 bytes, lane = output, byte =
// input, holding q_w + 128 as uint8 (64 bytes: one zmm). A tile's groups are
// contiguous (16 x padded_in bytes), so a range of tiles is one sequential
// stream. This is the operand layout of vpdpbusd (u8 x s8, 4 products per
// 32-bit lane) and of AMX's B tiles (16 rows of 64 bytes); the unsigned
// weight makes acc' = sum q_x (q_w + 128) and acc = acc' - 128 sum_i q_x
// (Int8Activations::sums), exact modulo 2^32.
//
// Paths (Int8Path), picked at run time:
//   portable     plain C++ int32 loops;
//   avx2         vpmaddubsw (|q_w| as u8 <= 128, times q_x sign(q_w) as s8:
//                pair sums <= 32512, no saturation) + vpmaddwd: 4 rows x 16
//                outputs per register block;
//   avx512-vnni  vpdpbusd on zmm: 6 rows x 64 outputs per register block;
//   amx          tdpbsud on 16 x 64 tiles (Sapphire Rapids and later), used
//                only when the CPU has AMX-TILE/AMX-INT8 and Linux grants the
//                tile-data permission (arch_prctl ARCH_REQ_XCOMP_PERM).
//                NOT TESTED: the development machine (AMD Zen 4) has no AMX.
// QFORGE_KERNEL / set_isa() (packed_matrix.hpp) select them: portable ->
// portable, avx2 -> avx2, avx512 or auto -> the best supported (amx, else
// avx512-vnni, else avx2). The library does no threading: callers split rows
// (quantize_int8) and tiles (Int8Matrix::gemm) between threads;
// qforge_kernels/torch_w8a8.hpp does so for LibTorch users.
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace qforge::kernels {

namespace detail {
// 64-byte aligned storage (whole cache lines, aligned zmm loads).
template <class T>
struct Aligned64 {
  using value_type = T;
  Aligned64() = default;
  template <class U>
  Aligned64(const Aligned64<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U>
  bool operator==(const Aligned64<U>&) const {
    return true;
  }
  template <class U>
  bool operator!=(const Aligned64<U>&) const {
    return false;
  }
};
template <class T>
using AlignedVector = std::vector<T, Aligned64<T>>;

// The scale s of one row of activations and the multiplier inv its codes are
// x * inv of (one definition for INT8 and FP8): the static scale (> 0), inv
// = 1 / s; or dynamic, s = max|x| / largest, inv = largest / max|x| (0 for
// an all-zero row, whose s is 0). `absmax` is called only when dynamic.
struct RowScale {
  float s = 0.f, inv = 0.f;
};
template <class Absmax>
RowScale row_scale(float static_scale, float largest, const Absmax& absmax) {
  if (static_scale > 0.f) return {static_scale, 1.0f / static_scale};
  const float m = absmax();
  return {m / largest, m > 0.f ? largest / m : 0.f};
}
}  // namespace detail

// ---------------------------------------------------------------------------
// Paths and dispatch
// ---------------------------------------------------------------------------

enum class Int8Path { kPortable = 0, kAvx2 = 1, kAvx512Vnni = 2, kAmx = 3 };

// "portable", "avx2", "avx512-vnni", "amx".
const char* int8_path_name(Int8Path path);
// Compiled in and supported by this CPU and OS.
bool int8_path_supported(Int8Path path);
// Every supported path, portable first.
std::vector<Int8Path> int8_paths();
// The path an instruction set selects: portable and avx2 themselves (or the
// best below when not supported), avx512 the best supported path.
Int8Path int8_path_for(Isa isa);
// int8_path_for(active_isa()).
Int8Path active_int8_path();

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

inline constexpr int64_t kInt8Pad = 64;                      // inputs padded to a multiple
inline constexpr int64_t kMaxInFeatures = int64_t{1} << 17;  // 127 * 128 * 2^17 < 2^31

// Rows quantized for one call.
struct Int8Activations {
  int64_t rows = 0, in = 0, ld = 0;     // ld: in rounded up to kInt8Pad
  detail::AlignedVector<int8_t> codes;  // [rows][ld], zero past in
  std::vector<float> scales;            // [rows]: s_r
  std::vector<int32_t> sums;            // [rows]: sum_i q_x[r, i]

  // Sizes for rows x in (codes zeroed).
  void resize(int64_t rows, int64_t in);
};

// Quantizes rows [r0, r1) of x (x[r * ldx + i], i < a.in) into `a`, sized
// by a.resize() first. static_scale > 0: that per-tensor scale; 0: dynamic
// per row. Thread-safe for disjoint row ranges.
void quantize_int8(const float* x, int64_t ldx, int64_t r0, int64_t r1, float static_scale,
                   Int8Activations& a, Int8Path path);
// All `rows` rows with the active path.
Int8Activations quantize_int8(const float* x, int64_t rows, int64_t in, int64_t ldx,
                              float static_scale);

// ---------------------------------------------------------------------------
// Weight matrix
// ---------------------------------------------------------------------------

class Int8Matrix {
 public:
  using Code = int8_t;                  // what the constructor reads
  static constexpr int64_t kTile = 16;  // outputs per tile

  Int8Matrix() = default;
  // w[o * ldw + i]: codes of W [out, in]; scales[o]: sw[o]. Validates
  // (1 <= in <= kMaxInFeatures, out >= 1, ldw >= in, finite scales) and
  // repacks; throws std::invalid_argument.
  Int8Matrix(const int8_t* w, int64_t out, int64_t in, int64_t ldw, const float* scales);

  bool empty() const { return out_ == 0; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t padded_in() const { return ld_; }
  int64_t tiles() const { return tiles_; }
  // Bytes the kernels stream per call: codes and scales.
  size_t packed_bytes() const { return w_.size() + scales_.size() * sizeof(float); }

  int8_t code(int64_t o, int64_t i) const;
  float scale(int64_t o) const { return scales_[static_cast<size_t>(o)]; }

  // y[r * ldy + o] = float(acc[r, o]) * (s_r * sw[o]) (+ bias[o] when bias is
  // not null) for every row of x and the outputs of tiles [t0, t1), i.e.
  // [16 t0, min(16 t1, out)). Thread-safe for disjoint tile ranges.
  void gemm(const Int8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias, Int8Path path) const;
  void gemm(const Int8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias) const {
    gemm(x, t0, t1, y, ldy, bias, active_int8_path());
  }
  // The int32 accumulators instead: acc[r * ldc + o] = sum_i q_x[r, i] q_w[o, i].
  void gemm_int32(const Int8Activations& x, int64_t t0, int64_t t1, int32_t* acc, int64_t ldc,
                  Int8Path path) const;

  // dst[(o - o0) * ld + i] = sw[o] * q_w[o, i] (float32) for o in [o0, o1).
  void dequantize_rows(int64_t o0, int64_t o1, float* dst, int64_t ld) const;

 private:
  void run(const Int8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
           const float* bias, int32_t* acc, int64_t ldc, Int8Path path) const;

  int64_t in_ = 0, out_ = 0, ld_ = 0, tiles_ = 0;
  detail::AlignedVector<uint8_t> w_;  // [tiles][ld / 4][16][4]: q_w + 128
  std::vector<float> scales_;         // [tiles * 16], 0 past out
};

}  // namespace qforge::kernels
