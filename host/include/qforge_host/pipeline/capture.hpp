// Calibration capture: the inputs of a stage's layers, gathered into Gram
// matrices, and the block forward passes that carry both streams on.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

#include "qforge_host/model/model.hpp"

namespace qforge::host {

// G = Σ xᵀx over every calibration sequence and, for QEP, Δ = Σ (x̃ − x)ᵀx,
// accumulated one sequence at a time in sequence order: the sums do not
// depend on how the forward passes were chunked.
struct GramAccumulator {
  at::Tensor gram, delta;  // [in, in] float32 (delta undefined without QEP)
  int64_t rows = 0;        // calibration tokens seen
  void add(const at::Tensor& x, const at::Tensor& x_fp);  // [S, T, in] each; x_fp may be undefined
};

// The inputs of linear `probe` of block `block`, for every sequence of `x`
// (the quantized stream, through the block as it is now) and, when `x_fp` is
// defined, of `x_fp` through `original` (the full-precision block). Each pass
// stops at the probe; `chunk` sequences per pass.
GramAccumulator capture_inputs(Model& model, size_t block, Block& original,
                               const std::string& probe, const at::Tensor& x,
                               const at::Tensor& x_fp, int64_t chunk);

// Block `block` applied to every sequence of `x` (`chunk` per pass), as
// float32, stored in x's dtype.
at::Tensor forward_block(const Model& model, size_t block, const at::Tensor& x, int64_t chunk);

}  // namespace qforge::host
