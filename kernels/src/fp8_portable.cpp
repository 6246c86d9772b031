// The portable FP8 kernels: fp8_body.inc over 16-lane vectors of GCC/Clang's
// vector extension, the codes looked up in kFp8E4m3Table (no fused
// multiply-add: the kernels library compiles with -ffp-contract=off), and the
// scalar encoder. Compiled for the baseline target.
#include "fp8_args.inc"

#include <qforge_kernels/fp8.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

typedef float F16x __attribute__((vector_size(64)));

struct V {
  using F = F16x;
  static F zero() { return F{}; }
  static F set1(float f) { return F{} + f; }
  static F bcast(const float* p) { return F{} + *p; }
  static F load(const float* p) {
    F r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static void store(float* p, F a) { std::memcpy(p, &a, sizeof a); }
  static F mul(F a, F b) { return a * b; }
  static F add(F a, F b) { return a + b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F decode(const uint8_t* p) {
    F r;
    for (int k = 0; k < 16; ++k) r[k] = kFp8E4m3Table.v[p[k]];
    return r;
  }
};

constexpr float kDecodeScale = 1.f;
constexpr int kMaxRows = 4, kMaxTiles = 1, kOneRowTiles = 1;

#include "fp8_body.inc"

void encode(const float* x, int64_t n, float inv, uint8_t* codes) {
  for (int64_t k = 0; k < n; ++k) codes[k] = fp8_encode_one(x[k] * inv);
}

void decode(const uint8_t* codes, int64_t n, float* dst) {
  for (int64_t k = 0; k < n; ++k) dst[k] = kFp8E4m3Table.v[codes[k]];
}

constexpr Fp8Kernels kTable = {fp8_gemm, fp8_dequant_t, encode, decode};

}  // namespace

const Fp8Kernels* fp8_portable_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
