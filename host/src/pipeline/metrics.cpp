#include "qforge_host/pipeline/metrics.hpp"

#include <ATen/ATen.h>

namespace qforge::host {

std::map<std::string, double> error_metrics(const at::Tensor& w, const at::Tensor& w_hat,
                                            const at::Tensor& hessian, int64_t n) {
  // ||XΔWᵀ||² = tr(ΔW XᵀX ΔWᵀ) = n/2 · tr(ΔW H ΔWᵀ): float32 products (no
  // double copy of a possibly 8192² Hessian), double accumulation.
  at::Tensor W = w.to(at::kFloat), D = W - w_hat.to(at::kFloat);
  double w_se = D.pow(2).sum(at::kDouble).item<double>();
  double w_ref = W.pow(2).sum(at::kDouble).item<double>();
  double rows = static_cast<double>(w.size(0)), numel = static_cast<double>(w.numel());
  std::map<std::string, double> m = {{"weight_squared_error", w_se},
                                     {"mean_weight_squared_error", w_se / numel},
                                     {"relative_weight_error", w_ref > 0 ? w_se / w_ref : 0.0}};
  if (!hessian.defined()) return m;  // calibration-free: no output error to speak of
  at::Tensor H = hessian.to(at::kFloat);
  double half_n = static_cast<double>(n) / 2.0;
  double out_se = half_n * (at::matmul(D, H) * D).sum(at::kDouble).item<double>();
  double out_ref = half_n * (at::matmul(W, H) * W).sum(at::kDouble).item<double>();
  m["output_squared_error"] = out_se;
  m["mean_output_squared_error"] = out_se / (static_cast<double>(n) * rows);
  m["relative_output_error"] = out_ref > 0 ? out_se / out_ref : 0.0;
  return m;
}

}  // namespace qforge::host
