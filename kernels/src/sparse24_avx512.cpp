// The AVX-512 2:4-sparse kernels (F, BW, VL): 16 kept values cover 32
// inputs; their codes become lane indices 4·(lane / 2) + code (vpsrlvd by
// 2·lane of the broadcast index word, vpternlogd for the mask and the
// offset), the x values are gathered from two registers (vpermt2ps) and
// multiplied with one FMA (sparse24.hpp). Compiled with -mavx512f -mavx512bw
// -mavx512vl (and AVX2/FMA); called only when the CPU and OS support them.
#include "sparse24_args.inc"

#include <immintrin.h>

#include <cstdint>

namespace qforge::kernels::detail {
namespace {

constexpr int kOneRowOuts = 8, kRows = 4, kOuts = 4;
// Chunks (64 bytes of values each) prefetched ahead in every row, one row of x.
constexpr int64_t kPrefetch = 16;

// Lane indices into the 32 inputs [lo, hi] of a chunk for the 16 codes of `word`.
inline __m512i lane_indices(uint32_t word) {
  const __m512i shifts =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base =
      _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i codes = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(word)), shifts);
  return _mm512_ternarylogic_epi32(codes, _mm512_set1_epi32(3), base, 0xEA);  // (a & b) | c
}

// The sum of the 16 lanes (through memory: GCC 12's _mm512_reduce_* and
// 512-bit extracts trip -Wuninitialized).
inline float sum16(__m512 a) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, a);
  const __m256 h = _mm256_add_ps(_mm256_load_ps(lanes), _mm256_load_ps(lanes + 8));
  const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
  return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}

template <int R, int NO>
void block(const Sparse24View& v, const Sparse24Call& c, int64_t r0, int64_t o0) {
  __m512 acc[R][NO];
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < NO; ++o) acc[r][o] = _mm512_setzero_ps();
  const float* w[NO];
  const uint32_t* ix[NO];
  for (int o = 0; o < NO; ++o) {
    w[o] = v.values + (o0 + o) * v.kept;
    ix[o] = v.idx + (o0 + o) * v.words;
  }
  const float* x = c.x + r0 * v.in;
  const int64_t full = v.kept / 16, rem = v.kept % 16;
  for (int64_t k = 0; k < full; ++k) {
    __m512i id[NO];
    __m512 wv[NO];
    for (int o = 0; o < NO; ++o) {
      if (R == 1)  // one row: bound by memory, the hardware prefetchers alone fall short
        _mm_prefetch(reinterpret_cast<const char*>(w[o] + 16 * (k + kPrefetch)), _MM_HINT_T0);
      id[o] = lane_indices(ix[o][k]);
      wv[o] = _mm512_loadu_ps(w[o] + 16 * k);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 lo = _mm512_loadu_ps(x + r * v.in + 32 * k);
      const __m512 hi = _mm512_loadu_ps(x + r * v.in + 32 * k + 16);
      for (int o = 0; o < NO; ++o)
        acc[r][o] = _mm512_fmadd_ps(wv[o], _mm512_permutex2var_ps(lo, id[o], hi), acc[r][o]);
    }
  }
  if (rem > 0) {  // rem values (even), 2 rem inputs; the lanes past them gather zeros
    const __mmask16 mv = static_cast<__mmask16>((1u << rem) - 1u);
    const int64_t n = 2 * rem;
    const __mmask16 mlo = n >= 16 ? static_cast<__mmask16>(0xFFFF)
                                  : static_cast<__mmask16>((1u << n) - 1u);
    const __mmask16 mhi =
        n > 16 ? static_cast<__mmask16>((1u << (n - 16)) - 1u) : static_cast<__mmask16>(0);
    __m512i id[NO];
    __m512 wv[NO];
    for (int o = 0; o < NO; ++o) {
      id[o] = lane_indices(ix[o][full]);
      wv[o] = _mm512_maskz_loadu_ps(mv, w[o] + 16 * full);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 lo = _mm512_maskz_loadu_ps(mlo, x + r * v.in + 32 * full);
      const __m512 hi = _mm512_maskz_loadu_ps(mhi, x + r * v.in + 32 * full + 16);
      for (int o = 0; o < NO; ++o)
        acc[r][o] = _mm512_fmadd_ps(wv[o], _mm512_permutex2var_ps(lo, id[o], hi), acc[r][o]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int o = 0; o < NO; ++o) {
      float s = sum16(acc[r][o]);
      if (c.bias != nullptr) s += c.bias[o0 + o];
      c.y[(r0 + r) * v.out + o0 + o] = s;
    }
}

#include "sparse24_body.inc"

}  // namespace

const Sparse24Kernels* sparse24_avx512_kernels() { return &kKernels; }

}  // namespace qforge::kernels::detail
