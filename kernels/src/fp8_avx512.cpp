// The AVX-512 FP8 kernels (F, BW, VL): fp8_body.inc over one 16-lane
// register, codes decoded by the float16 bit placement (fp8.hpp), and the
// vectorized encoder (fp8_encode_one's steps, lane by lane). Compiled with
// -mavx512f -mavx512bw -mavx512vl (and AVX2/FMA/F16C); called only when the
// CPU and OS support them.
#include "fp8_args.inc"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

// 16 codes as float16 bits of dec(c) * 2^-8: sign-extend, << 7, clear bit 14.
__m512 decode16(__m128i c) {
  const __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(c), 7);
  return _mm512_cvtph_ps(_mm256_and_si256(h, _mm256_set1_epi16(static_cast<short>(0xBFFF))));
}

struct V {
  using F = __m512;
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float f) { return _mm512_set1_ps(f); }
  static F bcast(const float* p) { return _mm512_set1_ps(*p); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, F x) { _mm512_storeu_ps(p, x); }
  static F mul(F x, F y) { return _mm512_mul_ps(x, y); }
  static F add(F x, F y) { return _mm512_add_ps(x, y); }
  static F fma(F x, F y, F z) { return _mm512_fmadd_ps(x, y, z); }
  static F decode(const uint8_t* p) {
    return decode16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};

constexpr float kDecodeScale = 256.f;
constexpr int kMaxRows = 6, kMaxTiles = 4, kOneRowTiles = 4;  // 24 zmm accumulators

#include "fp8_body.inc"

__mmask16 tail_mask(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

__m512i set1(uint32_t u) { return _mm512_set1_epi32(static_cast<int>(u)); }

// e4m3 codes of 16 floats in the low bytes of 32-bit lanes.
__m512i encode16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i a = _mm512_and_si512(u, set1(0x7FFFFFFFu));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 24), set1(0x80u));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(a, 20), set1(1u));
  const __m512i normal = _mm512_sub_epi32(
      _mm512_srli_epi32(_mm512_add_epi32(a, _mm512_add_epi32(set1(0x7FFFFu), odd)), 20),
      set1(kFp8Rebias));
  const __m512i sub =
      _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(512.f)));
  __m512i code =
      _mm512_mask_mov_epi32(normal, _mm512_cmplt_epu32_mask(a, set1(kFp8MinNormalBits)), sub);
  code = _mm512_mask_mov_epi32(code, _mm512_cmpge_epu32_mask(a, set1(kFp8SatBits)), set1(0x7Eu));
  code = _mm512_or_si512(code, sign);
  return _mm512_mask_mov_epi32(code, _mm512_cmpgt_epu32_mask(a, set1(0x7F800000u)), set1(0x7Fu));
}

void encode(const float* x, int64_t n, float inv, uint8_t* codes) {
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = tail_mask(n - k);
    const __m512i c = encode16(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + k), vinv));
    _mm_mask_storeu_epi8(codes + k, m, _mm512_cvtepi32_epi8(c));
  }
}

// NaN codes included.
void decode(const uint8_t* codes, int64_t n, float* dst) {
  const __m128i low7 = _mm_set1_epi8(0x7F);
  const __m512 nan = _mm512_castsi512_ps(set1(0x7FC00000u));
  for (int64_t k = 0; k < n; k += 16) {
    const __mmask16 m = tail_mask(n - k);
    const __m128i c = _mm_maskz_loadu_epi8(m, codes + k);
    __m512 f = _mm512_mul_ps(decode16(c), _mm512_set1_ps(kDecodeScale));
    f = _mm512_mask_mov_ps(f, _mm_cmpeq_epi8_mask(_mm_and_si128(c, low7), low7), nan);
    _mm512_mask_storeu_ps(dst + k, m, f);
  }
}

constexpr Fp8Kernels kTable = {fp8_gemm, fp8_dequant_t, encode, decode};

}  // namespace

const Fp8Kernels* fp8_avx512_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
