// The AVX2 FP8 kernels (with FMA and F16C): fp8_body.inc over pairs of 8-lane
// registers, codes decoded by the float16 bit placement (fp8.hpp), and the
// vectorized encoder (fp8_encode_one's steps, lane by lane). Compiled with
// -mavx2 -mfma -mf16c; called only when the CPU has them.
#include "fp8_args.inc"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

// 16 codes as float16 bits of dec(c) * 2^-8: sign-extend, << 7, clear bit 14.
__m256i to_half(__m128i c) {
  const __m256i h = _mm256_slli_epi16(_mm256_cvtepi8_epi16(c), 7);
  return _mm256_and_si256(h, _mm256_set1_epi16(static_cast<short>(0xBFFF)));
}

struct V {
  struct F {
    __m256 a, b;
  };
  static F zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static F set1(float f) { return {_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
  static F bcast(const float* p) {
    const __m256 r = _mm256_broadcast_ss(p);
    return {r, r};
  }
  static F load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void store(float* p, F x) {
    _mm256_storeu_ps(p, x.a);
    _mm256_storeu_ps(p + 8, x.b);
  }
  static F mul(F x, F y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
  static F add(F x, F y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
  static F fma(F x, F y, F z) {
    return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)};
  }
  static F decode(const uint8_t* p) {
    const __m256i h = to_half(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_cvtph_ps(_mm256_castsi256_si128(h)),
            _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1))};
  }
};

constexpr float kDecodeScale = 256.f;
constexpr int kMaxRows = 4, kMaxTiles = 1, kOneRowTiles = 2;

#include "fp8_body.inc"

__m256i set1(uint32_t u) { return _mm256_set1_epi32(static_cast<int>(u)); }

// e4m3 codes of 8 floats in the low bytes of 32-bit lanes.
__m256i encode8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i a = _mm256_and_si256(u, set1(0x7FFFFFFFu));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), set1(0x80u));
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(a, 20), set1(1u));
  const __m256i normal = _mm256_sub_epi32(
      _mm256_srli_epi32(_mm256_add_epi32(a, _mm256_add_epi32(set1(0x7FFFFu), odd)), 20),
      set1(kFp8Rebias));
  const __m256i sub =
      _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(512.f)));
  __m256i code = _mm256_blendv_epi8(normal, sub, _mm256_cmpgt_epi32(set1(kFp8MinNormalBits), a));
  code = _mm256_blendv_epi8(code, set1(0x7Eu), _mm256_cmpgt_epi32(a, set1(kFp8SatBits - 1)));
  code = _mm256_or_si256(code, sign);
  return _mm256_blendv_epi8(code, set1(0x7Fu), _mm256_cmpgt_epi32(a, set1(0x7F800000u)));
}

void encode(const float* x, int64_t n, float inv, uint8_t* codes) {
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256i c = encode8(_mm256_mul_ps(_mm256_loadu_ps(x + k), vinv));
    const __m128i c16 = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(codes + k), _mm_packus_epi16(c16, c16));
  }
  for (; k < n; ++k) codes[k] = fp8_encode_one(x[k] * inv);
}

// 16 codes, NaN codes included; the tail through a zero-padded copy.
void decode(const uint8_t* codes, int64_t n, float* dst) {
  const __m128i low7 = _mm_set1_epi8(0x7F);
  const __m256 nan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000));
  for (int64_t k = 0; k < n; k += 16) {
    alignas(16) uint8_t in[16] = {};
    alignas(32) float out[16];
    const bool full = n - k >= 16;
    if (!full) std::memcpy(in, codes + k, static_cast<size_t>(n - k));
    V::F f = V::mul(V::decode(full ? codes + k : in), V::set1(kDecodeScale));
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(full ? codes + k : in));
    const __m128i is_nan = _mm_cmpeq_epi8(_mm_and_si128(c, low7), low7);
    f.a = _mm256_blendv_ps(f.a, nan, _mm256_castsi256_ps(_mm256_cvtepi8_epi32(is_nan)));
    f.b = _mm256_blendv_ps(f.b, nan,
                           _mm256_castsi256_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(is_nan, 8))));
    V::store(full ? dst + k : out, f);
    if (!full) std::memcpy(dst + k, out, static_cast<size_t>(n - k) * sizeof(float));
  }
}

constexpr Fp8Kernels kTable = {fp8_gemm, fp8_dequant_t, encode, decode};

}  // namespace

const Fp8Kernels* fp8_avx2_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
