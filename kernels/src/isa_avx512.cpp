// The AVX-512 kernels (F, BW, VL): kernel_body.inc over one 16-lane register.
// Compiled with -mavx512f -mavx512bw -mavx512vl (and AVX2/FMA/F16C); called
// only when the CPU and OS support them (dispatch in packed_matrix.cpp).
#include "kernel_args.hpp"

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace qforge::kernels::detail {
namespace {

struct V {
  using I = __m512i;
  using F = __m512;

  static I load(const uint32_t* p) { return _mm512_loadu_si512(p); }
  template <int N>
  static I srl(I x) {
    return _mm512_srli_epi32(x, N);
  }
  template <int N>
  static I sll(I x) {
    return _mm512_slli_epi32(x, N);
  }
  static I or_(I x, I y) { return _mm512_or_si512(x, y); }
  // (x & mask) | one in one instruction (truth table 0xEA).
  static F mask_or(I x, I mask, I one) {
    return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(x, mask, one, 0xEA));
  }
  static I set1_i(uint32_t u) { return _mm512_set1_epi32(static_cast<int>(u)); }
  static F set1_f(float f) { return _mm512_set1_ps(f); }
  static F zero() { return _mm512_setzero_ps(); }
  static F add(F x, F y) { return _mm512_add_ps(x, y); }
  static F sub(F x, F y) { return _mm512_sub_ps(x, y); }
  static F mul(F x, F y) { return _mm512_mul_ps(x, y); }
  static F fma(F x, F y, F z) { return _mm512_fmadd_ps(x, y, z); }
  static F fnma(F x, F y, F z) { return _mm512_fnmadd_ps(x, y, z); }
  static F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static F load_f(const float* p) { return _mm512_loadu_ps(p); }
  static void store_f(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F load_h(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F load_u8(const uint8_t* p) {
    return _mm512_cvtepi32_ps(
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static F add_masked(F acc, F x, uint32_t m) {
    return _mm512_mask_add_ps(acc, static_cast<__mmask16>(m), acc, x);
  }
};

constexpr int64_t kMaxRows = 8;
constexpr int kSignRows = 2;  // 16 of the 32 zmm registers accumulate

#include "kernel_body.inc"

}  // namespace

const KernelTable* avx512_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
