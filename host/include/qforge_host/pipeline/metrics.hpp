// Per-layer error figures of a quantized weight.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <map>
#include <string>

namespace qforge::host {

// The standard per-layer error figures for weight W, its quantized Ŵ and
// the Hessian H = 2/n XᵀX of the n calibration inputs X:
// output_squared_error ||X(W−Ŵ)ᵀ||², mean_output_squared_error (/ n·out),
// weight_squared_error ||W−Ŵ||², mean_weight_squared_error (/ out·in),
// relative_output_error ||X(W−Ŵ)ᵀ||² / ||XWᵀ||², relative_weight_error
// ||W−Ŵ||² / ||W||² (both squared ratios).
std::map<std::string, double> error_metrics(const at::Tensor& w, const at::Tensor& w_hat,
                                            const at::Tensor& hessian, int64_t n);

}  // namespace qforge::host
