// The AVX-512 VNNI INT8 kernels: vpdpbusd (u8 weights q_w + 128 times the
// broadcast s8 activation codes, 4 products per 32-bit lane) over register
// blocks of up to 6 rows x 4 tiles (24 zmm accumulators), then
// acc = acc' - 128 sum_i q_x. Also the AVX-512 activation encoder (used by the
// AMX path too). Compiled with -mavx512f/bw/vl/vnni; called only when
// the CPU has them (int8_matmul.cpp).
#include "int8_args.inc"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

constexpr int kMaxRows = 6, kMaxTiles = 4;
// nearbyint: the current rounding mode (round half to even by default).
constexpr int kRound = _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC;

__mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// max_i |x_i| over non-NaN values: max(a, m) returns m when a is NaN.
float absmax(const float* x, int64_t n) {
  __m512 m = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16)
    m = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)), m);
  alignas(64) float lanes[16];  // (GCC 12's _mm512_reduce_* trip -Wuninitialized)
  _mm512_store_ps(lanes, m);
  float r = 0.f;
  for (float l : lanes) r = l > r ? l : r;
  return r;
}

// Codes of one row and their sum.
int32_t encode_row(const float* x, int64_t n, float inv, int8_t* q) {
  const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.f), hi = _mm512_set1_ps(127.f);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), vinv), kRound);
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);  // NaN -> -127
    const __m512i c = _mm512_cvtps_epi32(v);
    sum = _mm512_mask_add_epi32(sum, k, sum, c);
    _mm512_mask_cvtsepi32_storeu_epi8(q + i, k, c);
  }
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, sum);
  int32_t total = 0;
  for (int32_t l : lanes) total += l;
  return total;
}

// One row of one tile from exact accumulators.
void store(const Int8View& v, const Int8Call& c, int64_t r, int64_t t, __m512i acc) {
  const int64_t o0 = t * 16;
  if (v.out - o0 < 16) {
    alignas(64) int32_t a[16];
    _mm512_store_si512(a, acc);
    int8_store_row(v, c, r, t, a, static_cast<int>(v.out - o0));
  } else if (c.acc != nullptr) {
    _mm512_storeu_si512(c.acc + r * c.ldc + o0, acc);
  } else {
    const __m512 s = _mm512_mul_ps(_mm512_set1_ps(c.x_scales[r]), _mm512_loadu_ps(v.scales + o0));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), s);
    if (c.bias != nullptr) y = _mm512_add_ps(y, _mm512_loadu_ps(c.bias + o0));
    _mm512_storeu_ps(c.y + r * c.ldy + o0, y);
  }
}

// acc + the 4-byte dot products of u8 a and s8 b in each 32-bit lane
// (vpdpbusd). In asm: GCC 12 keeps _mm512_dpbusd_epi32's accumulators of a
// register block in memory too, storing all 24 of them every step.
__m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
  return acc;
}

int32_t load4(const int8_t* p) {
  int32_t u;
  std::memcpy(&u, p, 4);
  return u;
}

// Rows [r0, r0 + R) against tiles [t, t + T).
template <int R, int T>
void block(const Int8View& v, const Int8Call& c, int64_t r0, int64_t t) {
  __m512i acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < T; ++j) acc[r][j] = _mm512_setzero_si512();
  const int64_t tile_bytes = v.groups * 64;
  const uint8_t* w = v.w + t * tile_bytes;
  const int8_t* x = c.x + r0 * c.ldx;
  for (int64_t g = 0; g < v.groups; ++g) {
    __m512i wv[T];
    for (int j = 0; j < T; ++j) wv[j] = _mm512_load_si512(w + j * tile_bytes + g * 64);
    for (int r = 0; r < R; ++r) {
      const __m512i xb = _mm512_set1_epi32(load4(x + r * c.ldx + 4 * g));
      for (int j = 0; j < T; ++j) acc[r][j] = dpbusd(acc[r][j], wv[j], xb);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512i offset = _mm512_set1_epi32(128 * c.x_sums[r0 + r]);
    for (int j = 0; j < T; ++j) store(v, c, r0 + r, t + j, _mm512_sub_epi32(acc[r][j], offset));
  }
}

// block<nr, nt> for nr <= R, nt <= T.
template <int R, int T>
void dispatch(int nr, int nt, const Int8View& v, const Int8Call& c, int64_t r0, int64_t t) {
  if constexpr (R > 1)
    if (nr < R) return dispatch<R - 1, T>(nr, nt, v, c, r0, t);
  if constexpr (T > 1)
    if (nt < T) return dispatch<R, T - 1>(nr, nt, v, c, r0, t);
  block<R, T>(v, c, r0, t);
}

void gemm(const Int8View& v, const Int8Call& c, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; t += kMaxTiles) {
    const int nt = static_cast<int>(t1 - t < kMaxTiles ? t1 - t : kMaxTiles);
    for (int64_t r = 0; r < c.rows; r += kMaxRows) {
      const int nr = static_cast<int>(c.rows - r < kMaxRows ? c.rows - r : kMaxRows);
      dispatch<kMaxRows, kMaxTiles>(nr, nt, v, c, r, t);
    }
  }
}

constexpr Int8Kernels kTable = {gemm, absmax, encode_row};

}  // namespace

const Int8Kernels* int8_avx512_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
