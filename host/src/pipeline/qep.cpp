#include "qforge_host/pipeline/qep.hpp"

#include <ATen/ATen.h>

namespace qforge::host {

at::Tensor qep_correct(const at::Tensor& w, const at::Tensor& gram, const at::Tensor& delta,
                       double percdamp, double perccorr) {
  at::Tensor G = gram.to(at::kDouble).clone();
  at::Tensor W = w.to(at::kDouble).clone();
  at::Tensor diag = G.diagonal();
  at::Tensor dead = diag == 0;
  double damp = percdamp * diag.mean().item<double>();
  diag.masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);
  diag.add_(damp);
  at::Tensor L = at::linalg_cholesky(G);
  // W Δ G⁻¹ = (G⁻¹ Δᵀ Wᵀ)ᵀ, G symmetric.
  at::Tensor rhs = at::matmul(delta.to(at::kDouble).t(), W.t());
  at::Tensor corr = at::cholesky_solve(rhs, L).t();
  return (W + perccorr * corr).to(w.scalar_type());
}

}  // namespace qforge::host
