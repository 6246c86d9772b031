// Internal: the plain-data view of a PackedMatrix that the per-ISA
// translation units receive. Those are compiled with different -m flags, so
// they include nothing but this header, <cstdint>, <cstring>, <utility> and
// the intrinsics headers, and keep all their code in an anonymous namespace:
// no inline function or template is shared between translation units built
// for different instruction sets (the linker could otherwise keep an AVX-512
// copy of it for everyone).
#pragma once

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {

// IEEE float16 bits -> float (exact). `static`: every translation unit has
// its own copy, compiled for its own ISA.
static inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);  // normal: exponent 15 -> 127
  } else if (man == 0) {
    bits = sign;  // signed zero
  } else {        // subnormal: man * 2^-24, normalised
    int e = 0;
    uint32_t m = man;
    while ((m & 0x400u) == 0) {
      m <<= 1;
      ++e;
    }
    bits = sign | (static_cast<uint32_t>(113 - e) << 23) | ((m & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

struct MatrixView {
  int bits;
  int64_t out, tiles, chunks, groups;
  const uint32_t* codes;  // [tiles][chunks][bits][16]
  const void* scales;     // [tiles][groups][16], float16 (scales_f16) or float32
  const void* zeros;      // [tiles][groups][16], uint8 (zeros_u8) or float32
  bool scales_f16, zeros_u8;
  int64_t segments;
  const int32_t* seg_group;
  const int32_t* seg_chunk0;
  const int32_t* seg_chunks;
  const int64_t* seg_xoff;   // staged offset of the segment's first chunk
  const int64_t* seg_begin;  // permuted positions [begin, end) of the segment
  const int64_t* seg_end;
  const int32_t* perm;       // permuted position -> input column
};

struct GemmCall {
  int64_t rows;
  const float* x;  // staged, [rows][ldx]
  int64_t ldx;
  const float* sums;  // [rows][segments]
  float* y;
  int64_t ldy;
  const float* bias;  // [out] or null
};

// A sign plane S in {±1}^{rows x cols} (sign_chain.hpp): row o is `words`
// uint64, bit b of word w is S[o, 64 w + b] (1 = +1); bits past cols are 0.
struct SignView {
  const uint64_t* bits;
  int64_t words;
};

// x staged: [rows][ldx], zero from cols to 64 words; sums[r] = sum_j x[r, j].
// y[r * ldy + o] = scale[o] (2 sum_{j: S[o,j] = +1} x[r, j] - sums[r]) (+ bias[o]);
// scale or bias may be null.
struct SignCall {
  int64_t rows;
  const float* x;
  int64_t ldx;
  const float* sums;
  float* y;
  int64_t ldy;
  const float* scale;
  const float* bias;
};

// A randomized Hadamard transform on rows of x (hadamard.hpp): each row is
// [pow2][r]; x *= pre_signs, each block of r ← its product with base
// (out[j] = Σ_k x[k] base[k * r + j]; none when base is null), butterflies
// over the pow2 blocks, then x *= scale (· post_signs). r ≤ kMaxBase.
inline constexpr int64_t kMaxBase = 1024;
struct HadamardCall {
  float* x;
  int64_t rows, ld, pow2, r;
  const float* base;
  const float* pre_signs;
  const float* post_signs;
  float scale;
};

// One ISA's kernels. gemm: tiles [t0, t1), all rows. dequant_t: W transposed
// for tiles [t0, t1) into dst[i * ld + 16 (t - t0) + lane]. sign_gemm: the
// outputs [o0, o1) of a sign plane, all rows. hadamard: all rows.
struct KernelTable {
  void (*gemm)(const MatrixView&, const GemmCall&, int64_t t0, int64_t t1);
  void (*dequant_t)(const MatrixView&, int64_t t0, int64_t t1, float* dst, int64_t ld);
  void (*sign_gemm)(const SignView&, const SignCall&, int64_t o0, int64_t o1);
  void (*hadamard)(const HadamardCall&);
};

// Null when the ISA is not compiled in.
const KernelTable* portable_kernels();
const KernelTable* avx2_kernels();
const KernelTable* avx512_kernels();

}  // namespace qforge::kernels::detail
