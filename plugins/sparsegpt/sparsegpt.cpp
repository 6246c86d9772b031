// The quantizers of qforge-sparsegpt: pruning, alone or with quantization.
//
// org.qforge.sparsegpt: SparseGPT, Algorithm 1 of
//   E. Frantar, D. Alistarh. "SparseGPT: Massive Language Models Can Be
//   Accurately Pruned in One-Shot", ICML 2023, arXiv:2301.00774.
// For one layer, find a mask M and weights Ŵ minimising ‖WX − (M ⊙ Ŵ)X‖²
// (the layer-wise problem), H = 2/n XᵀX. Removing weight w_m costs, by
// Optimal Brain Surgeon, ε_m = w_m² / [H⁻¹]_mm, and the rest of the row is
// corrected by δ = −(w_m / [H⁻¹]_mm) · H⁻¹[:, m]. SparseGPT visits the
// columns left to right with the Cholesky factor of H⁻¹, so every row shares
// one sequence of inverse Hessians ("Fast Approximate Reconstruction", the
// same sweep as GPTQ):
//
//   Hinv = Cholesky((H + λI)⁻¹)ᵀ,  λ = percdamp · mean(diag H)
//   for each block of B columns [i, i + B):
//     for j in i .. i + B − 1:
//       if j mod Bs == 0: mask[:, j:j+Bs] = the weights with the least
//                         w_c² / [Hinv]_cc²       ("Adaptive Mask Selection")
//       Err[:, j − i] = (W[:, j] − (mask ? 0 : quant(W[:, j]))) / Hinv[j, j]
//       W[:, j:i+B]  −= Err[:, j − i] · Hinv[j, j:i+B]        (OBS update)
//     W[:, i+B:] −= Err · Hinv[i:i+B, i+B:]                    (lazy batch update)
//
// N:M sparsity ("Semi-Structured Sparsity"): Bs = M, and N of every M per
// row are pruned (2:4 for sparse tensor cores); unstructured: per block of B
// columns, the lowest `sparsity` of the scores over all rows. Joint
// sparsification and quantization: quant() rounds the kept weights on the
// grid in the same pass (weights=int: GPTQ's uniform grid, packed as
// org.qforge.gptq/1; weights=fp8: E4M3 per channel,
// org.qforge.ct-naive-quantized/1, as llm-compressor's 2:4 + FP8_DYNAMIC
// recipe); weights=float keeps the kept weights in float32,
// org.qforge.pruned/1. The loop is qforge_gptq_core's (plugins/gptq/gptq.cpp),
// which also keeps a quantized kept weight off the value 0 so that N:M stays
// exactly N:M.
//
// As llm-compressor's SparseGPTModifier (research/llm-compressor.md §6.8):
// the score uses the error-updated weights; block 128, dampening 0.01. Its
// default mask is unstructured ("0:0"); ours is 2:4, the one kernels run.
//
// org.qforge.magnitude: the baseline, the same masks chosen by |w| alone and
// nothing corrected (calibration-free).
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/gptq_v1.h>
#include <qforge/formats/pruned_v1.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>

#include "ct_naive_writer.hpp"
#include "gptq.hpp"
#include "sparsegpt.hpp"

namespace qforge::sparsegpt {
namespace {

using nlohmann::json;

// ------------------------------------------------------------ SparseGPT --

// The mask parameters: `mask`, and `sparsity` for unstructured masks.
Structure mask_of(const Params& p) { return parse_structure(p.get_string("mask"), "mask"); }

// Algorithm 1's settings for `weights` (float | int | fp8) and the mask.
gptq::Settings settings(const Params& p, int64_t in_f, const std::string& weights,
                        const Structure& mask) {
  gptq::Settings s;
  if (weights == "int") {
    s = gptq::gptq_v1_settings(p, in_f);  // GPTQ's grid, as org.qforge.gptq builds it
  } else {
    s.percdamp = p.get_float("percdamp");
    s.block_size = std::min<int64_t>(p.get_int("block_size"), in_f);
  }
  if (weights == "fp8") {  // one e4m3 scale per output channel, as org.qforge.fp8
    s.codebook = gptq::Settings::Codebook::fp8_e4m3;
    s.grid.bits = 8;
    s.grid.half_scales = true;
    s.group_size = in_f;
  }
  s.quantize = weights != "float";
  if (mask.unstructured()) {
    s.sparsity = p.get_float("sparsity");
  } else {
    s.prune_n = mask.n;
    s.prune_m = mask.m;
  }
  s.name = "sparsegpt";
  return s;
}

// weights=fp8: org.qforge.ct-naive-quantized/1 with e4m3 weights per channel
// and dynamic per-token e4m3 activations (llm-compressor's FP8_DYNAMIC),
// written as org.qforge.fp8 writes it.
void write_fp8(const QuantizeOutput& out, const gptq::Settings& s, const gptq::Result& r,
               const LayerInput& in) {
  const int64_t rows = in.out_features();
  at::Tensor scales = at::empty({rows, 1}, at::kFloat);
  for (int64_t o = 0; o < rows; ++o) scales.data_ptr<float>()[o] = r.grids[o].scale;
  json meta = w8a8::metadata("float", w8a8::Scheme{}, in.in_features(), rows);
  if (const std::string structure = gptq::sparsity_structure(s); !structure.empty())
    meta[QFORGE_META_SPARSITY_STRUCTURE] = structure;
  w8a8::finish(out, in, meta, r.codes, scales, at::Tensor(), r.Q);
  out.set_metric("hessian_error", r.hessian_error);
  out.set_metric("percdamp_used", r.percdamp_used);
}

struct SparseGpt {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_PRUNED_V1, QFORGE_FORMAT_GPTQ_V1,
                                       QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1, nullptr};
    return list;
  }
  static void quantize(const Host& host, const qforge_quantize_input& input, const Params& p,
                       const QuantizeOutput& out) {
    host.check_cancelled();
    const LayerInput in = LayerInput::from(input);
    if (!in.hessian.defined())
      invalid_argument("SparseGPT needs calibration (a Hessian): give --calib FILE");
    const std::string weights = p.get_enum("weights");
    const Structure mask = mask_of(p);
    const gptq::Settings s = settings(p, in.in_features(), weights, mask);
    // Working copies: the inputs are only borrowed.
    const gptq::Result r = gptq::gptq(host, s, in.weight.clone(at::MemoryFormat::Contiguous),
                                      in.hessian.clone(at::MemoryFormat::Contiguous));
    if (weights == "int") {
      gptq::write_gptq_v1(out, s, r, in);
    } else if (weights == "fp8") {
      write_fp8(out, s, r, in);
    } else {
      write_pruned(out, in, r.Q, mask);
      out.set_metric("hessian_error", r.hessian_error);
      out.set_metric("percdamp_used", r.percdamp_used);
      out.set_metric("dead_inputs", static_cast<double>(r.dead_inputs));
    }
  }
};

// ------------------------------------------------------------ magnitude --

// N:M: in every group of M along a row, the N smallest |w| set to 0 (ties:
// the lower input first).
at::Tensor magnitude_n_of_m(const at::Tensor& w, const Structure& s) {
  if (w.size(1) % s.m != 0)
    invalid_argument("N:M pruning: the input width " + std::to_string(w.size(1)) +
                     " is not a multiple of M = " + std::to_string(s.m));
  const at::Tensor groups = w.reshape({w.size(0), -1, s.m});
  const at::Tensor order = std::get<1>(at::sort(groups.abs(), /*stable=*/true, 2, false));
  return groups.scatter(2, order.narrow(2, 0, s.n), 0.0).reshape(w.sizes()).contiguous();
}

// Unstructured: the floor(sparsity · out · in) smallest |w| of the layer set
// to 0 (ties: the lower flat index first).
at::Tensor magnitude_unstructured(const at::Tensor& w, double sparsity) {
  const int64_t k = static_cast<int64_t>(static_cast<double>(w.numel()) * sparsity);
  at::Tensor flat = w.flatten().clone();
  const at::Tensor order = std::get<1>(at::sort(flat.abs(), /*stable=*/true, 0, false));
  flat.index_fill_(0, order.narrow(0, 0, k), 0.0);
  return flat.reshape(w.sizes()).contiguous();
}

struct Magnitude {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_PRUNED_V1, nullptr};
    return list;
  }
  static void quantize(const Host& host, const qforge_quantize_input& input, const Params& p,
                       const QuantizeOutput& out) {
    host.check_cancelled();
    const LayerInput in = LayerInput::from(input);
    const Structure mask = mask_of(p);
    const at::Tensor w = in.weight.contiguous();
    write_pruned(out, in,
                 mask.unstructured() ? magnitude_unstructured(w, p.get_float("sparsity"))
                                     : magnitude_n_of_m(w, mask),
                 mask);
  }
};

void mask_params(ComponentBuilder& c) {
  c.param_string("mask", "2:4",
                 "\"N:M\": N of every M consecutive inputs of each row pruned (0 < N < M <= 64; "
                 "the input width must be a multiple of M), or \"unstructured\"")
      .param_float("sparsity", 0.5, 0, 0.99,
                   "the fraction of weights pruned with mask=unstructured (unused by N:M)");
}

}  // namespace

void write_pruned(const QuantizeOutput& out, const LayerInput& in, const at::Tensor& pruned,
                  const Structure& s) {
  if (!at::isfinite(pruned).all().item<bool>())
    invalid_argument("pruning produced non-finite weights (is the Hessian badly scaled?)");
  const double zeros = static_cast<double>(pruned.eq(0).sum().item<int64_t>());
  const json meta = {{QFORGE_PRUNED_V1_IN_FEATURES, in.in_features()},
                     {QFORGE_PRUNED_V1_OUT_FEATURES, in.out_features()},
                     {QFORGE_META_SPARSITY_STRUCTURE, s.text()},
                     {QFORGE_PRUNED_V1_SPARSITY, zeros / static_cast<double>(pruned.numel())}};
  out.set_format(QFORGE_FORMAT_PRUNED_V1, meta);
  out.add_tensor(QFORGE_PRUNED_V1_WEIGHT, pruned);
  if (in.bias.defined()) out.add_tensor(QFORGE_PRUNED_V1_BIAS, in.bias);
  out.set_dequantized(pruned);
  out.set_metric("max_abs_error", (pruned - in.weight).abs().max().item<double>());
}

void describe_quantizers(Plugin& plugin) {
  auto& sparsegpt = plugin.quantizer<SparseGpt>(
      {"org.qforge.sparsegpt", "SparseGPT", "1.0.0", "qforge", "MIT",
       "SparseGPT (Frantar & Alistarh, ICML 2023, arXiv:2301.00774, Algorithm 1): prunes each "
       "layer to an N:M pattern (2:4 by default) or an unstructured fraction, choosing the "
       "weights by w^2/[H^-1]_jj^2 on the error-updated weights and compensating every pruned "
       "weight on the columns not yet visited through the inverse Hessian of the layer's "
       "calibration inputs (needs --calib). weights=float keeps the kept weights "
       "(org.qforge.pruned/1, run by org.qforge.pruned.layer); weights=int quantizes them in "
       "the same pass on GPTQ's grid (org.qforge.gptq/1); weights=fp8 to E4M3 per channel "
       "with dynamic per-token FP8 activations (org.qforge.ct-naive-quantized/1, "
       "llm-compressor's 2:4 + FP8_DYNAMIC). A quantized kept weight never rounds to 0, so "
       "N:M holds exactly."});
  sparsegpt.features({QFORGE_FEATURE_NEEDS_HESSIAN, "pruning", "n-of-m"});
  mask_params(sparsegpt);
  sparsegpt
      .param_enum("weights", "float", {"float", "int", "fp8"},
                  "the kept weights: float32 (pruning alone), int (GPTQ's uniform grid: bits, "
                  "group_size, sym), or fp8 (E4M3, one scale per output channel)")
      .param_int("bits", 4, 2, 8, "weights=int: bits per weight code")
      .param_int("group_size", 128, -1, 1 << 20,
                 "weights=int: input columns sharing one scale/zero; -1 = one group per output "
                 "channel")
      .param_bool("sym", true,
                  "weights=int: symmetric grid (true) or asymmetric min/max with a per-group zero "
                  "point (false)")
      .param_float("percdamp", 0.01, 0, 1,
                   "dampening: add percdamp * mean(diag H) to the Hessian's diagonal")
      .param_int("block_size", 128, 1, 1 << 20,
                 "columns per lazy batch update (and unstructured mask block); a multiple of M");
  auto& magnitude = plugin.quantizer<Magnitude>(
      {"org.qforge.magnitude", "Magnitude pruning", "1.0.0", "qforge", "MIT",
       "Magnitude pruning, the baseline of SparseGPT's paper: in every group of M consecutive "
       "inputs of each row the N smallest |w| set to 0 (mask=N:M, 2:4 by default), or the "
       "`sparsity` fraction of the layer's smallest |w| (mask=unstructured); the kept weights "
       "are unchanged. Calibration-free. Writes org.qforge.pruned/1."});
  magnitude.features({QFORGE_FEATURE_CALIBRATION_FREE, "pruning", "n-of-m"});
  mask_params(magnitude);
}

}  // namespace qforge::sparsegpt
