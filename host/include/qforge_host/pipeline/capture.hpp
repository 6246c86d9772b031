// Calibration capture: the inputs of a stage's layers, gathered into Gram
// matrices, and the block forward passes that carry both streams on.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "qforge_host/model/model.hpp"

namespace qforge::host {

// What a stage's capture keeps besides G: what QEP and the quantizer asked
// for (its QFORGE_FEATURE_NEEDS_* tags). Nothing else is computed.
struct CaptureWants {
  bool gram = true;        // G itself (false: statistics only, for pre-processes)
  bool delta = false;      // QEP's cross term (needs the full-precision stream)
  bool inputs_q = false;   // the quantized stream's inputs, row for row
  bool inputs_fp = false;  // the full-precision stream's inputs (needs that stream)
  bool act_stats = false;  // mean |x| per channel of the quantized stream
  bool act_range = false;  // min and max x per channel of the quantized stream
};

// G = Σ xᵀx over every calibration sequence and, for QEP, Δ = Σ (x̃ − x)ᵀx,
// accumulated one sequence at a time in sequence order: the sums do not
// depend on how the forward passes were chunked.
struct GramAccumulator {
  at::Tensor gram, delta;  // [in, in] float32 (delta undefined without QEP)
  at::Tensor inputs_q, inputs_fp;  // [rows, in] float32 when wanted
  at::Tensor act_stats;    // [in] float32 when wanted
  at::Tensor act_min, act_max;  // [in] float32 when act_range is wanted
  int64_t rows = 0;        // calibration tokens seen
};

// The inputs of linear `probe` of block `block`, for every sequence of `x`
// (the quantized stream, through the block as it is now) and, when `x_fp` is
// defined, of `x_fp` through `original` (the full-precision block). Each pass
// stops at the probe; `chunk` sequences per pass.
GramAccumulator capture_inputs(Model& model, size_t block, Block& original,
                               const std::string& probe, const at::Tensor& x,
                               const at::Tensor& x_fp, int64_t chunk, const CaptureWants& wants);

// Block `block` applied to every sequence of `x` (`chunk` per pass), as
// float32, stored in x's dtype.
at::Tensor forward_block(const Model& model, size_t block, const at::Tensor& x, int64_t chunk);

struct BlockScope;  // qforge_host/train/postprocess.hpp

// The scope pre-processes see block `block` in (model services input_stats,
// input_gram): statistics of its linears' inputs over the calibration inputs
// `x` through the block as it is when they are asked for (`chunk` sequences
// per pass). `model` and `x` must outlive it.
BlockScope preprocess_scope(Model& model, size_t block, const at::Tensor& x, int64_t chunk);

}  // namespace qforge::host
