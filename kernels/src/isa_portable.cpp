// The portable kernels: kernel_body.inc over 16-lane vectors of GCC/Clang's
// vector extension, compiled for the baseline target.
#include "kernel_args.hpp"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

namespace qforge::kernels::detail {
namespace {

// GCC/Clang vector extensions: 16-lane vectors that the compiler lowers to
// whatever the target has (SSE2 on baseline x86-64, NEON, or scalar code).
typedef uint32_t U16x __attribute__((vector_size(64)));
typedef float F16x __attribute__((vector_size(64)));

// The lane masks of 16 bits: kBitMask[l] = 1 << l.
const U16x kBitMask = {1u << 0,  1u << 1,  1u << 2,  1u << 3,  1u << 4,  1u << 5,
                       1u << 6,  1u << 7,  1u << 8,  1u << 9,  1u << 10, 1u << 11,
                       1u << 12, 1u << 13, 1u << 14, 1u << 15};

struct V {
  using I = U16x;
  using F = F16x;

  static I load(const uint32_t* p) {
    I r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  template <int N>
  static I srl(I a) {
    return a >> N;
  }
  template <int N>
  static I sll(I a) {
    return a << N;
  }
  static I or_(I a, I b) { return a | b; }
  static F mask_or(I a, I mask, I one) { return reinterpret_cast<F>((a & mask) | one); }
  static I set1_i(uint32_t u) { return I{} + u; }
  static F set1_f(float f) { return F{} + f; }
  static F zero() { return F{}; }
  static F add(F a, F b) { return a + b; }
  static F sub(F a, F b) { return a - b; }
  static F mul(F a, F b) { return a * b; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F fnma(F a, F b, F c) { return c - a * b; }
  static F bcast(const float* p) { return F{} + *p; }
  static F load_f(const float* p) {
    F r;
    std::memcpy(&r, p, sizeof r);
    return r;
  }
  static void store_f(float* p, F a) { std::memcpy(p, &a, sizeof a); }
  static F load_h(const uint16_t* p) {
    F r;
    for (int k = 0; k < 16; ++k) r[k] = half_to_float(p[k]);
    return r;
  }
  static F add_masked(F acc, F x, uint32_t m) {
    const U16x set = reinterpret_cast<U16x>(((U16x{} + m) & kBitMask) != 0);  // all ones where set
    return acc + reinterpret_cast<F>(reinterpret_cast<U16x>(x) & set);
  }
  static F load_u8(const uint8_t* p) {
    F r;
    for (int k = 0; k < 16; ++k) r[k] = static_cast<float>(p[k]);
    return r;
  }
};

constexpr int64_t kMaxRows = 4;  // a fallback: fewer instantiations, faster builds
constexpr int kSignRows = 1;

#include "kernel_body.inc"

}  // namespace

const KernelTable* portable_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
