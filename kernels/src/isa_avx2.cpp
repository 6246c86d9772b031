// The AVX2 kernels (with FMA and F16C): kernel_body.inc over pairs of 8-lane
// registers. Compiled with -mavx2 -mfma -mf16c; called only when the CPU has
// them (dispatch in packed_matrix.cpp).
#include "kernel_args.hpp"

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace qforge::kernels::detail {
namespace {

// The lane masks of a byte: kByteMasks.m[b][l] = all ones when bit l of b is
// set. constexpr: built by the compiler, not by a static constructor (which
// would run AVX2 code at start-up on any CPU).
struct ByteMasks {
  alignas(32) uint32_t m[256][8] = {};
  constexpr ByteMasks() {
    for (int b = 0; b < 256; ++b)
      for (int l = 0; l < 8; ++l) m[b][l] = (b >> l) & 1 ? 0xFFFFFFFFu : 0u;
  }
};
constexpr ByteMasks kByteMasks;

struct V {
  struct I {
    __m256i a, b;
  };
  struct F {
    __m256 a, b;
  };

  static I load(const uint32_t* p) {
    return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))};
  }
  template <int N>
  static I srl(I x) {
    return {_mm256_srli_epi32(x.a, N), _mm256_srli_epi32(x.b, N)};
  }
  template <int N>
  static I sll(I x) {
    return {_mm256_slli_epi32(x.a, N), _mm256_slli_epi32(x.b, N)};
  }
  static I or_(I x, I y) { return {_mm256_or_si256(x.a, y.a), _mm256_or_si256(x.b, y.b)}; }
  static F mask_or(I x, I mask, I one) {
    return {_mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(x.a, mask.a), one.a)),
            _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(x.b, mask.b), one.b))};
  }
  static I set1_i(uint32_t u) {
    const __m256i r = _mm256_set1_epi32(static_cast<int>(u));
    return {r, r};
  }
  static F set1_f(float f) {
    const __m256 r = _mm256_set1_ps(f);
    return {r, r};
  }
  static F zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static F add(F x, F y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
  static F sub(F x, F y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
  static F mul(F x, F y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
  static F fma(F x, F y, F z) {
    return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)};
  }
  static F fnma(F x, F y, F z) {
    return {_mm256_fnmadd_ps(x.a, y.a, z.a), _mm256_fnmadd_ps(x.b, y.b, z.b)};
  }
  static F bcast(const float* p) {
    const __m256 r = _mm256_broadcast_ss(p);
    return {r, r};
  }
  static F load_f(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void store_f(float* p, F x) {
    _mm256_storeu_ps(p, x.a);
    _mm256_storeu_ps(p + 8, x.b);
  }
  static F load_h(const uint16_t* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
  }
  static F add_masked(F acc, F x, uint32_t m) {
    const __m256 lo = _mm256_load_ps(reinterpret_cast<const float*>(kByteMasks.m[m & 0xFFu]));
    const __m256 hi = _mm256_load_ps(reinterpret_cast<const float*>(kByteMasks.m[m >> 8]));
    return {_mm256_add_ps(acc.a, _mm256_and_ps(x.a, lo)), _mm256_add_ps(acc.b, _mm256_and_ps(x.b, hi))};
  }
  static F load_u8(const uint8_t* p) {
    return {_mm256_cvtepi32_ps(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))),
            _mm256_cvtepi32_ps(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8))))};
  }
};

// 16 ymm registers: two per accumulator row; more rows would spill.
constexpr int64_t kMaxRows = 4;
constexpr int kSignRows = 1;  // 16 ymm accumulators per row already

#include "kernel_body.inc"

}  // namespace

const KernelTable* avx2_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
