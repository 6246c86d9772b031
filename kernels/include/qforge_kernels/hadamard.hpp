// Randomized Hadamard transforms, for incoherence processing (QuIP, Chee et
// al. 2023, §4; the randomized Hadamard transform of QuIP#, Tseng et al.
// 2024, §3): an orthogonal n × n matrix
//
//   T = (H_{2^a} ⊗ B) · diag(signs) / √(2^a),   n = 2^a · r,
//
// with H_{2^a} the Sylvester–Hadamard matrix, B an orthogonal r × r base
// (a built-in Hadamard matrix H_r / √r, or any orthogonal matrix the caller
// stores, e.g. a seeded random one when no Hadamard matrix of order r is
// built in) and random ±1 signs. T x costs n (a + r) operations: a levels of
// butterflies (fast Walsh–Hadamard transform) and one r × r product per block.
//
// Built-in Hadamard orders r (besides powers of two, which need no base):
// Paley's constructions over finite fields GF(q), q = p^k a prime power:
//   Paley I   r = q + 1      for q ≡ 3 (mod 4)   (12, 20, 24, 28, 32, 44, 48, 60, …, 344, …)
//   Paley II  r = 2 (q + 1)  for q ≡ 1 (mod 4)   (12, 20, 28, 36, 52, 60, 76, 100, …)
// up to kMaxHadamardBase. Not built in: orders that need other
// constructions, e.g. 92 or 172 (Williamson); there a caller falls back to an
// orthogonal base of its own.
//
// The butterflies run in the per-ISA translation units (portable / AVX2 /
// AVX-512, picked at run time); they are additions and subtractions only, so
// every ISA gives the same bits. The base product uses FMAs where the ISA has
// them.
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include <cstdint>
#include <vector>

namespace qforge::kernels {

inline constexpr int64_t kMaxHadamardBase = 512;  // the base product costs r per element

// H_r as ±1 floats [r][r] (H Hᵀ = r I) when order r is built in (r = 1, 2, a
// Paley order ≤ kMaxHadamardBase); empty otherwise. Deterministic.
std::vector<float> hadamard_matrix(int64_t r);
bool hadamard_built_in(int64_t r);

// A random orthogonal r × r matrix (row-major), the same bits on every
// machine: std::mt19937_64(seed) (its output is fixed by the C++ standard)
// gives entries ≈ N(0, 1) as (Σ of 12 uniforms u = (x >> 11) · 2^-53) − 6;
// the rows are orthonormalised in order by modified Gram–Schmidt in double
// (only +, −, ×, ÷ and √, correctly rounded by IEEE 754, in a fixed order,
// no contraction), then rounded to float. For sizes without a Hadamard
// matrix (org.qforge.quip/1's base kind "random").
std::vector<float> random_orthogonal(int64_t r, uint64_t seed);

// n = 2^a · r with the largest a whose r has a built-in Hadamard matrix
// (r = 1 when n is a power of two); {0, 0} when no a works.
struct HadamardSplit {
  int64_t pow2 = 0, base = 0;
};
HadamardSplit hadamard_split(int64_t n);

class RandomizedHadamard {
 public:
  RandomizedHadamard() = default;
  // signs: n values ±1; base: r × r row-major orthogonal (for r > 1), e.g.
  // hadamard_matrix(r) scaled by 1/√r. Throws std::invalid_argument when
  // n ≠ pow2 · r, pow2 is not a power of two, or a size is wrong.
  RandomizedHadamard(int64_t pow2, int64_t r, std::vector<float> signs, std::vector<float> base);

  int64_t size() const { return pow2_ * base_order_; }
  int64_t pow2() const { return pow2_; }
  int64_t base_order() const { return base_order_; }
  const std::vector<float>& signs() const { return signs_; }
  const std::vector<float>& base() const { return base_; }

  // Each row x[i · ld .. i · ld + n) ← T x (in place), or Tᵀ x when `transpose`.
  void apply(float* x, int64_t rows, int64_t ld, bool transpose, Isa isa) const;
  void apply(float* x, int64_t rows, int64_t ld, bool transpose) const {
    apply(x, rows, ld, transpose, active_isa());
  }
  // T as a dense matrix [n][n] (tests, the quantizer's reference).
  std::vector<float> matrix() const;

 private:
  int64_t pow2_ = 1, base_order_ = 1;
  std::vector<float> signs_, base_, base_t_;  // base_t_: Bᵀ, for transpose
};

}  // namespace qforge::kernels
