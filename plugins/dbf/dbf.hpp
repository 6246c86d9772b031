// Double binary factorization (DBF): W ≈ diag(s4)·S_A·diag(s2)·S_B·diag(s0)
// with sign matrices S_A [n, k], S_B [k, m] (Boža & Macko 2025, arXiv
// 2505.11076), computed as OneComp does (research/onecomp.md §3.2) or with
// the layer's calibration data.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

namespace qforge::dbf {

struct Settings {
  int64_t k = 1;                  // middle dimension
  bool data_aware = true;         // use the Hessian (needs `hessian`): the two below
  bool column_weights = true;     // data-aware: factorize W·diag(√diag H)
  bool balance = true;            // Sinkhorn pre-balancing (§3.2 step 2)
  int64_t balance_iters = 40;
  double balance_alpha = 1.0;     // target row norm
  bool balance_l2 = false;        // balance squared ℓ2 norms instead of ℓ1
  int64_t iters = 600;            // outer alternating iterations (at most, with `tol`)
  double tol = 0;                 // stop when the relative error changes less than this
                                  // over 10 iterations (0: run every iteration)
  double reg = 3e-2;              // ridge, relative to mean diag(LᵀL)
  bool adaptive_rho = true;       // Boyd's residual balancing of the ADMM penalty
  bool svd_init = true;           // start from the truncated SVD (else seeded Gaussian)
  int scale_rounds = 5;           // data-aware: rounds of fitting s4, s2, s0 to the output error
  uint64_t seed = 0;
};

struct Factors {
  at::Tensor s4, s2, s0;          // [n], [k], [m] float32 (float16 values)
  at::Tensor sign_a, sign_b;      // [n, k], [k, m] float32, ±1
  int64_t iterations = 0;         // outer iterations run
  double relative_error = 0;      // ‖T − A·B‖ / ‖T‖ on the factorized (weighted) target
};

// Factorizes W [n, m] (float32); `hessian` [m, m] (2/N XᵀX, undamped) is used
// by the data-aware mode. Throws std::runtime_error when it does not converge
// to finite values.
Factors factorize(const at::Tensor& w, const at::Tensor& hessian, const Settings& s);

// Ŵ = diag(s4)·S_A·diag(s2)·S_B·diag(s0), [n, m] float32.
at::Tensor reconstruct(const Factors& f);

// k for a budget of `bits` per weight on an [n, m] layer, counting the sign
// planes only: ⌊bits·n·m/(n + m)⌋, at least 1 (OneComp clamps it to
// min(n, m) too, silently giving grouped-query k/v layers fewer bits; here k
// may exceed min(n, m): the factorization is then over-complete, which sign
// constraints make use of).
int64_t middle_dimension(double bits, int64_t n, int64_t m);

// Bits per weight with every scale counted as float16 (§3.5):
// k(n+m)/(nm) + 16(n+k+m)/(nm).
double effective_bits(int64_t k, int64_t n, int64_t m);

}  // namespace qforge::dbf
