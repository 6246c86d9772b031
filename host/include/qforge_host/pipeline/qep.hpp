// Quantization-error propagation (QEP): the weight correction applied before
// a layer is quantized when the full-precision stream runs beside the
// quantized one (pipeline.cpp keeps both streams).
#pragma once

#include <ATen/Tensor.h>

namespace qforge::host {

// QEP weight correction (Arai & Ichikawa, NeurIPS 2025, "Quantization Error
// Propagation"): W* = W + α W Δ (G + λI)⁻¹ with G = XᵀX of the quantized-model
// inputs X, Δ = (X̃ − X)ᵀX for the full-precision inputs X̃, λ = percdamp ·
// mean(diag G), α = perccorr. Dead input columns (diag G = 0) are zeroed.
// Scaling G and Δ by the same factor (e.g. 2/n) leaves the result unchanged.
at::Tensor qep_correct(const at::Tensor& w, const at::Tensor& gram, const at::Tensor& delta,
                       double percdamp, double perccorr);

}  // namespace qforge::host
