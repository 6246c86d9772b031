// Optional header-only helper (ATen): preparing a layer's Hessian H = 2/n XᵀX
// for a second-order method (GPTQ, and the OBS family: SparseGPT, LDLQ):
//
//   remove_dead_inputs       H_ii = 0 (an input that was always zero): H_ii = 1
//                            and W[:, i] = 0, the reference's `dead` handling
//   cholesky_inverse_upper   U with H⁻¹ = UᵀU, U upper triangular, without
//                            forming H⁻¹ (paper §"Step 3: Cholesky reformulation")
//   dampened_cholesky_inverse  the same for H + λI, λ = percdamp · mean(diag H),
//                            raising percdamp when H + λI is not positive definite
#ifndef QFORGE_CPP_HESSIAN_HPP
#define QFORGE_CPP_HESSIAN_HPP

#include <ATen/ATen.h>
#include <qforge/cpp/plugin.hpp>

#include <cstdint>
#include <string>
#include <tuple>

namespace qforge::hessian {

// H [in, in] and W [out, in], float32, modified in place. Returns how many
// inputs were dead.
inline int64_t remove_dead_inputs(at::Tensor& H, at::Tensor& W) {
  const at::Tensor dead = H.diagonal().eq(0);
  const int64_t count = dead.sum().item<int64_t>();
  if (count == 0) return 0;
  H.diagonal().masked_fill_(dead, 1.f);
  W.masked_fill_(dead.unsqueeze(0), 0.f);
  return count;
}

// inv = M⁻¹ for a lower-triangular M, by blocks:
//   [A 0; B C]⁻¹ = [A⁻¹ 0; −C⁻¹ B A⁻¹ C⁻¹],
// the off-diagonal block by two triangular solves (n³/3 flops in all).
inline void invert_lower_triangular(const at::Tensor& M, at::Tensor inv) {
  const int64_t n = M.size(0);
  if (n <= 256) {
    inv.copy_(at::linalg_solve_triangular(M, at::eye(n, M.options()), /*upper=*/false));
    return;
  }
  const int64_t h = n / 2;
  const at::Tensor A = M.narrow(0, 0, h).narrow(1, 0, h);
  const at::Tensor B = M.narrow(0, h, n - h).narrow(1, 0, h);
  const at::Tensor C = M.narrow(0, h, n - h).narrow(1, h, n - h);
  invert_lower_triangular(A, inv.narrow(0, 0, h).narrow(1, 0, h));
  invert_lower_triangular(C, inv.narrow(0, h, n - h).narrow(1, h, n - h));
  const at::Tensor CinvB = at::linalg_solve_triangular(C, B, /*upper=*/false, /*left=*/true);
  const at::Tensor X = at::linalg_solve_triangular(A, CinvB, /*upper=*/false, /*left=*/false);
  inv.narrow(0, h, n - h).narrow(1, 0, h).copy_(X).neg_();
  inv.narrow(0, 0, h).narrow(1, h, n - h).zero_();
}

// U with H⁻¹ = UᵀU, U upper triangular; undefined when H is not numerically
// positive definite. The reference computes Cholesky(H), its inverse, then the
// Cholesky factor of that: twice the work. With J the exchange matrix (J
// reverses the index order):
//   JHJ = M Mᵀ (Cholesky, M lower)  ⇒  H = (JMJ)(JMJ)ᵀ, JMJ upper
//   ⇒  H⁻¹ = (JMJ)⁻ᵀ (JMJ)⁻¹ = UᵀU  with  U = (JMJ)⁻¹ = J M⁻¹ J,
// upper triangular with a positive diagonal, hence the Cholesky factor (it is
// unique). One Cholesky and one triangular inverse; in float32 it is closer to
// a float64 computation than the reference's route.
inline at::Tensor cholesky_inverse_upper(const at::Tensor& H) {
  at::Tensor M, info;
  std::tie(M, info) = at::linalg_cholesky_ex(H.flip({0, 1}), /*upper=*/false,
                                             /*check_errors=*/false);
  if (info.item<int>() != 0) return at::Tensor();
  at::Tensor Minv = at::empty_like(M, at::MemoryFormat::Contiguous);
  invert_lower_triangular(M, Minv);
  at::Tensor U = Minv.flip({0, 1}).contiguous();
  if (!at::isfinite(U).all().item<bool>()) return at::Tensor();
  return U;
}

struct Dampened {
  at::Tensor Hinv;  // the upper Cholesky factor of (H + λI)⁻¹
  double percdamp;  // the percdamp that made H + λI positive definite
};

// H + λI, λ = percdamp · mean(diag H), and its cholesky_inverse_upper. When
// H + λI is not numerically positive definite, percdamp is raised tenfold (at
// most five times) with a warning, as GPTQ ports commonly do; then it is an
// INVALID_ARGUMENT. `method` starts the messages.
inline Dampened dampened_cholesky_inverse(const at::Tensor& H, double percdamp, const Host& host,
                                          const std::string& method) {
  const double mean_diag = H.diagonal().mean().item<double>();
  for (int attempt = 0; attempt <= 5; ++attempt) {
    if (attempt > 0) {
      percdamp = percdamp > 0 ? percdamp * 10 : 0.01;
      host.log(QFORGE_LOG_WARN, method +
                                    ": the dampened Hessian is not positive definite; "
                                    "retrying with percdamp = " +
                                    std::to_string(percdamp));
    }
    at::Tensor Hd = H.clone();
    Hd.diagonal().add_(percdamp * mean_diag);
    at::Tensor Hinv = cholesky_inverse_upper(Hd);
    if (Hinv.defined()) return Dampened{Hinv, percdamp};
  }
  invalid_argument(method + ": the Hessian is not positive definite, even dampened with percdamp = " +
                   std::to_string(percdamp) +
                   " (is it a Hessian 2/n XᵀX of this layer's inputs?)");
}

}  // namespace qforge::hessian

#endif  // QFORGE_CPP_HESSIAN_HPP
