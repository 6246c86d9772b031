// The portable INT8 kernels: plain int32 loops, compiled for the baseline
// target. The reference for the SIMD paths' activation codes.
#include "int8_args.inc"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

constexpr int kMaxRows = 4;  // rows sharing each weight load

// NaN never wins: a > m is false.
float absmax(const float* x, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

int32_t encode_row(const float* x, int64_t n, float inv, int8_t* q) {
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    float v = std::nearbyint(x[i] * inv);
    v = v > -127.f ? v : -127.f;  // NaN -> -127, as SIMD max(v, -127)
    v = v < 127.f ? v : 127.f;
    q[i] = static_cast<int8_t>(v);
    sum += q[i];
  }
  return sum;
}

// Rows [r0, r0 + R) against tile t: exact sums of q_x q_w.
template <int R>
void block(const Int8View& v, const Int8Call& c, int64_t r0, int64_t t) {
  int32_t acc[R][16] = {};
  const uint8_t* w = v.w + t * v.groups * 64;
  for (int64_t g = 0; g < v.groups; ++g, w += 64) {
    for (int r = 0; r < R; ++r) {
      const int8_t* x = c.x + (r0 + r) * c.ldx + 4 * g;
      for (int l = 0; l < 16; ++l)
        for (int b = 0; b < 4; ++b)
          acc[r][l] += static_cast<int32_t>(x[b]) * (static_cast<int32_t>(w[4 * l + b]) - 128);
    }
  }
  const int n = static_cast<int>(v.out - t * 16 < 16 ? v.out - t * 16 : 16);
  for (int r = 0; r < R; ++r) int8_store_row(v, c, r0 + r, t, acc[r], n);
}

void gemm(const Int8View& v, const Int8Call& c, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t r = 0;
    for (; r + kMaxRows <= c.rows; r += kMaxRows) block<kMaxRows>(v, c, r, t);
    for (; r < c.rows; ++r) block<1>(v, c, r, t);
  }
}

constexpr Int8Kernels kTable = {gemm, absmax, encode_row};

}  // namespace

const Int8Kernels* int8_portable_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
