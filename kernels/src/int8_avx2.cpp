// The AVX2 INT8 kernels: vpmaddubsw of |q_w| (u8, <= 128) with q_x sign(q_w)
// (s8, |.| <= 127: the codes stop at -127), whose pair sums stay within
// 2 * 128 * 127 = 32512 (no saturation), widened by vpmaddwd; register blocks
// of up to 4 rows x 16 outputs. Also the AVX2 activation encoder. Compiled
// with -mavx2 -mfma -mf16c; called only when the CPU has them.
#include "int8_args.inc"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

constexpr int kMaxRows = 4;
constexpr int kRound = _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC;  // as nearbyint

float hmax(__m256 m) {
  __m128 v = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  v = _mm_max_ps(v, _mm_movehl_ps(v, v));
  v = _mm_max_ps(v, _mm_shuffle_ps(v, v, 1));
  return _mm_cvtss_f32(v);
}

int32_t hsum(__m256i s) {
  __m128i v = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
  return _mm_cvtsi128_si32(v);
}

// max_i |x_i| over non-NaN values: max(a, m) returns m when a is NaN.
float absmax(const float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 mv = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    mv = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask), mv);
  float m = hmax(mv);
  for (; i < n; ++i) {
    const float a = __builtin_fabsf(x[i]);
    m = a > m ? a : m;
  }
  return m;
}

int8_t encode_one(float x, float inv) {
  float v = __builtin_nearbyintf(x * inv);
  v = v > -127.f ? v : -127.f;
  v = v < 127.f ? v : 127.f;
  return static_cast<int8_t>(v);
}

// Codes of one row and their sum.
int32_t encode_row(const float* x, int64_t n, float inv, int8_t* q) {
  const __m256 vinv = _mm256_set1_ps(inv), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  __m256i sum = _mm256_setzero_si256();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), kRound);
    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);  // NaN -> -127
    const __m256i c = _mm256_cvtps_epi32(v);
    sum = _mm256_add_epi32(sum, c);
    const __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + i), _mm_packs_epi16(c16, c16));
  }
  int32_t total = hsum(sum);
  for (; i < n; ++i) total += (q[i] = encode_one(x[i], inv));
  return total;
}

// One row of one tile (lanes 0-7 in a, 8-15 in b) from exact accumulators.
void store(const Int8View& v, const Int8Call& c, int64_t r, int64_t t, __m256i a, __m256i b) {
  const int64_t o0 = t * 16;
  if (v.out - o0 < 16) {
    alignas(32) int32_t acc[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(acc), a);
    _mm256_store_si256(reinterpret_cast<__m256i*>(acc + 8), b);
    int8_store_row(v, c, r, t, acc, static_cast<int>(v.out - o0));
  } else if (c.acc != nullptr) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.acc + r * c.ldc + o0), a);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.acc + r * c.ldc + o0 + 8), b);
  } else {
    const __m256 sr = _mm256_set1_ps(c.x_scales[r]);
    const __m256i half[2] = {a, b};
    for (int h = 0; h < 2; ++h) {
      const int64_t o = o0 + 8 * h;
      __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(half[h]),
                               _mm256_mul_ps(sr, _mm256_loadu_ps(v.scales + o)));
      if (c.bias != nullptr) y = _mm256_add_ps(y, _mm256_loadu_ps(c.bias + o));
      _mm256_storeu_ps(c.y + r * c.ldy + o, y);
    }
  }
}

int32_t load4(const int8_t* p) {
  int32_t u;
  std::memcpy(&u, p, 4);
  return u;
}

// Rows [r0, r0 + R) against tile t: sums of q_x q_w directly (no offset).
template <int R>
void block(const Int8View& v, const Int8Call& c, int64_t r0, int64_t t) {
  __m256i acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80)), ones = _mm256_set1_epi16(1);
  const uint8_t* w = v.w + t * v.groups * 64;
  const int8_t* x = c.x + r0 * c.ldx;
  for (int64_t g = 0; g < v.groups; ++g, w += 64) {
    __m256i sw[2], aw[2];  // q_w and |q_w|
    for (int h = 0; h < 2; ++h) {
      sw[h] =
          _mm256_xor_si256(_mm256_load_si256(reinterpret_cast<const __m256i*>(w + 32 * h)), flip);
      aw[h] = _mm256_abs_epi8(sw[h]);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i xb = _mm256_set1_epi32(load4(x + r * c.ldx + 4 * g));
      for (int h = 0; h < 2; ++h) {
        const __m256i p = _mm256_maddubs_epi16(aw[h], _mm256_sign_epi8(xb, sw[h]));
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(p, ones));
      }
    }
  }
  for (int r = 0; r < R; ++r) store(v, c, r0 + r, t, acc[r][0], acc[r][1]);
}

void gemm(const Int8View& v, const Int8Call& c, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    int64_t r = 0;
    for (; r + kMaxRows <= c.rows; r += kMaxRows) block<kMaxRows>(v, c, r, t);
    switch (c.rows - r) {
      case 3: block<3>(v, c, r, t); break;
      case 2: block<2>(v, c, r, t); break;
      case 1: block<1>(v, c, r, t); break;
      default: break;
    }
  }
}

constexpr Int8Kernels kTable = {gemm, absmax, encode_row};

}  // namespace

const Int8Kernels* int8_avx2_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
