// GPTQ (Frantar et al., 2023) inside the qforge-gptq plugin: what Algorithm 1
// (gptq.cpp), its column-form reference (gptq_ref.cpp) and the ABI glue
// (plugin.cpp) share.
#pragma once

#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace qforge::gptq {

struct Settings {
  // The values a group's weights are rounded to: the uniform grid of `grid`
  // (code q in [0, maxq], W = s·(q − z)), or FP8 E4M3 (the code is the e4m3
  // byte, W = s·e4m3(code), s = max|w| / 448 over the group in float16,
  // never 0; `grid` is then unused).
  enum class Codebook { uniform, fp8_e4m3 } codebook = Codebook::uniform;
  grid::Spec grid;           // bits, sym, mse, and what the packed format can store
  int64_t group_size = 128;  // effective: in_features for one group per row
  bool desc_act = false;     // act-order: columns by decreasing H_jj
  bool static_groups = false;
  double percdamp = 0.01;
  int64_t block_size = 128;  // B, the columns of one lazy batch update

  // SparseGPT (Frantar & Alistarh, 2023, Algorithm 1) in the same pass:
  // pruned weights become exactly 0 and their error is compensated like a
  // rounding error. N:M (prune_n of every prune_m consecutive inputs, e.g.
  // 2:4): at every M-th column the N weights of the next M with the least
  // w² / [H⁻¹]_jj² — on the error-updated weights — are pruned (B must be a
  // multiple of M; no act-order, which would cut the groups of M along
  // another order). Unstructured (prune_m = 0, sparsity > 0): per block, the
  // weights of the block's columns whose w² / [H⁻¹]_jj² (as the block
  // begins) is among the lowest `sparsity` of the block, over all rows.
  int prune_n = 0, prune_m = 0;
  double sparsity = 0;
  // false: the kept weights keep their values (pruning alone; codes unused).
  bool quantize = true;

  // The method's name in progress ("<name> columns") and dampening messages.
  const char* name = "gptq";
};

struct Result {
  at::Tensor Q;                   // float32 [out, in]: the quantized weight, original order
  at::Tensor codes;               // uint8 [out, in]: its codes, original order
  std::vector<grid::Grid> grids;  // [groups][out]
  std::vector<int32_t> g_idx;     // [in]: the group of every input
  int64_t groups = 0;
  double hessian_error = 0;  // Σ (w − q)² / Hinv_jj² / 2, the reference's Losses
  double percdamp_used = 0;
  int64_t dead_inputs = 0;
};

// Algorithm 1 with lazy batch updates, row by row (gptq.cpp). W [out, in] and
// H [in, in] float32 contiguous, consumed.
Result gptq(const Host& host, const Settings& s, at::Tensor W, at::Tensor H);

// The settings of a uniform grid that org.qforge.gptq/1 can store, from a
// quantizer's parameters `bits`, `group_size`, `sym`, `percdamp` and
// `block_size` (checked; INVALID_ARGUMENT otherwise) for a layer of
// `in_features` inputs: float16 scales and zero points >= 1 applied before
// the grid is used (so that Algorithm 1 compensates for them), the block size
// cut to the input width. The rest (mse, act-order, pruning) is the caller's
// (gptq_v1.cpp).
Settings gptq_v1_settings(const Params& params, int64_t in_features);

// The metadata value "sparsity_structure" (qforge/formats/pruned_v1.h) of a
// result of `s`: "N:M", "unstructured", or "" when `s` prunes nothing.
std::string sparsity_structure(const Settings& s);

// `r` (from gptq() with uniform-grid settings `s` for the layer `in`) as the
// packed format org.qforge.gptq/1: qweight, qzeros, float16 scales, g_idx,
// bias, metadata (with "sparsity_structure" when `s` prunes) and error
// figures, to `out` (gptq_v1.cpp).
void write_gptq_v1(const QuantizeOutput& out, const Settings& s, const Result& r,
                   const LayerInput& in);

// The same algorithm transcribed column by column in LibTorch ops from
// gptq.py's fasterquant (gptq_ref.cpp): the spec gptq() is tested against.
// No dampening retry; `grids` is left empty.
Result gptq_ref(const Settings& s, at::Tensor W, at::Tensor H);

}  // namespace qforge::gptq
