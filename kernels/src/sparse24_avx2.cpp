// The AVX2 2:4-sparse kernels (+FMA): 8 kept values cover 16 inputs (groups
// 0..3); x is rearranged once per 16 inputs into [group 0 | group 2] and
// [group 1 | group 3] (one group per 128-bit lane), each lane's code is
// shifted into its low 2 bits (vpsrlvd; vpermilps reads only those), two
// vpermilps and a blend gather the x values, one FMA (sparse24.hpp). Compiled
// with -mavx2 -mfma; called only when the CPU and OS support them.
#include "sparse24_args.inc"

#include <immintrin.h>

#include <cstdint>

namespace qforge::kernels::detail {
namespace {

constexpr int kOneRowOuts = 4, kRows = 2, kOuts = 4;
// Chunks (32 bytes of values each) prefetched ahead in every row, one row of x.
constexpr int64_t kPrefetch = 32;

// Per lane j: code 8h + j of `word` in the low 2 bits (h = half of the word).
inline __m256i lane_codes(uint32_t word, int h) {
  const __m256i shifts = h == 0 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                                : _mm256_setr_epi32(16, 18, 20, 22, 24, 26, 28, 30);
  return _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts);
}

inline __m256 gather(__m256 t02, __m256 t13, __m256i id) {
  return _mm256_blend_ps(_mm256_permutevar_ps(t02, id), _mm256_permutevar_ps(t13, id), 0xCC);
}

// Lanes k < n on (n <= 8), as a maskload mask.
inline __m256i first(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <int R, int NO>
void block(const Sparse24View& v, const Sparse24Call& c, int64_t r0, int64_t o0) {
  __m256 acc[R][NO];
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < NO; ++o) acc[r][o] = _mm256_setzero_ps();
  const float* w[NO];
  const uint32_t* ix[NO];
  for (int o = 0; o < NO; ++o) {
    w[o] = v.values + (o0 + o) * v.kept;
    ix[o] = v.idx + (o0 + o) * v.words;
  }
  const float* x = c.x + r0 * v.in;
  const int64_t full = v.kept / 8, rem = v.kept % 8;
  for (int64_t k = 0; k < full; ++k) {  // values 8k.., inputs 16k..
    if (R == 1 && (k & 1) == 0)  // one row: bound by memory, see sparse24_avx512.cpp
      for (int o = 0; o < NO; ++o)
        _mm_prefetch(reinterpret_cast<const char*>(w[o] + 8 * (k + kPrefetch)), _MM_HINT_T0);
    __m256i id[NO];
    for (int o = 0; o < NO; ++o) id[o] = lane_codes(ix[o][k / 2], static_cast<int>(k & 1));
    for (int r = 0; r < R; ++r) {
      const float* xr = x + r * v.in + 16 * k;
      const __m256 a = _mm256_loadu_ps(xr), b = _mm256_loadu_ps(xr + 8);
      const __m256 t02 = _mm256_permute2f128_ps(a, b, 0x20);
      const __m256 t13 = _mm256_permute2f128_ps(a, b, 0x31);
      for (int o = 0; o < NO; ++o)
        acc[r][o] = _mm256_fmadd_ps(_mm256_loadu_ps(w[o] + 8 * k), gather(t02, t13, id[o]),
                                    acc[r][o]);
    }
  }
  if (rem > 0) {  // rem values (2, 4 or 6), 2 rem inputs; lanes past them gather zeros
    const __m256i mv = first(rem);
    const int64_t n = 2 * rem;
    const __m256i ma = first(n), mb = first(n - 8);
    for (int r = 0; r < R; ++r) {
      const float* xr = x + r * v.in + 16 * full;
      const __m256 a = _mm256_maskload_ps(xr, ma), b = _mm256_maskload_ps(xr + 8, mb);
      const __m256 t02 = _mm256_permute2f128_ps(a, b, 0x20);
      const __m256 t13 = _mm256_permute2f128_ps(a, b, 0x31);
      for (int o = 0; o < NO; ++o) {
        const __m256i id = lane_codes(ix[o][full / 2], static_cast<int>(full & 1));
        acc[r][o] = _mm256_fmadd_ps(_mm256_maskload_ps(w[o] + 8 * full, mv),
                                    gather(t02, t13, id), acc[r][o]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < NO; ++o) {
      const __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc[r][o]),
                                  _mm256_extractf128_ps(acc[r][o], 1));
      const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
      float s = _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
      if (c.bias != nullptr) s += c.bias[o0 + o];
      c.y[(r0 + r) * v.out + o0 + o] = s;
    }
}

#include "sparse24_body.inc"

}  // namespace

const Sparse24Kernels* sparse24_avx2_kernels() { return &kKernels; }

}  // namespace qforge::kernels::detail
