// The block-sequential quantization pipeline (DESIGN.md "Pipeline").
//
// Block by block: capture the block's inputs for the calibration samples,
// accumulate each linear's Hessian H = 2/n XᵀX in float32 (one sequence at a
// time, so the result does not depend on the chunk size), quantize the
// block's layers in true-sequential order (q/k/v, o, gate/up, down; layers
// that share an input share one Hessian) through the quantizer plugin, put
// the dequantized weights in place, and run the quantized block to produce
// the next block's inputs. With QEP the full-precision stream runs beside
// the quantized one and each weight is corrected for the error in its inputs
// before it is quantized. Each finished block is written and checkpointed.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "calibration.hpp"
#include "checkpoint.hpp"
#include "quantize.hpp"
#include "registry.hpp"
#include "selection.hpp"

namespace qforge::host {

struct QuantizeOptions {
  std::string model_dir;
  std::string out_dir;
  std::string method;                           // quantizer component id
  std::map<std::string, std::string> params;    // --set
  std::vector<LayerOverride> overrides;         // per-layer parameter overrides
  LayerSelection selection;
  CalibrationOptions calibration;
  bool qep = false;
  double qep_percdamp = 0.01;   // dampening of H, as a fraction of mean(diag H)
  double qep_perccorr = 0.5;    // fraction of the QEP correction applied
  bool resume = false;
  int64_t chunk = 4;            // calibration sequences per forward pass
  at::ScalarType act_dtype = at::kFloat;  // storage of calibration activations
  SaveFormat save_format = SaveFormat::dequantized;  // what --out receives
};

struct LayerReport {
  std::string name;
  std::string format;
  std::string metadata;
  std::map<std::string, double> metrics;  // see error_metrics()
};

struct QuantizeSummary {
  std::string calibration;              // what calibration data was used
  std::vector<LayerReport> layers;
  int64_t resumed_from_block = 0;       // 0 when started afresh
  std::string results_file;
};

// Thrown when the user asked to stop (Ctrl-C); the checkpoint is usable.
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

QuantizeSummary quantize_model(const Registry& registry, const QuantizeOptions& options);

// The standard per-layer error figures for weight W, its quantized Ŵ and
// the Hessian H = 2/n XᵀX of the n calibration inputs X:
// output_squared_error ||X(W−Ŵ)ᵀ||², mean_output_squared_error (/ n·out),
// weight_squared_error ||W−Ŵ||², mean_weight_squared_error (/ out·in),
// relative_output_error ||X(W−Ŵ)ᵀ||² / ||XWᵀ||², relative_weight_error
// ||W−Ŵ||² / ||W||² (both squared ratios).
std::map<std::string, double> error_metrics(const at::Tensor& w, const at::Tensor& w_hat,
                                            const at::Tensor& hessian, int64_t n);

// QEP weight correction (Arai & Ichikawa, NeurIPS 2025, "Quantization Error
// Propagation"): W* = W + α W Δ (G + λI)⁻¹ with G = XᵀX of the quantized-model
// inputs X, Δ = (X̃ − X)ᵀX for the full-precision inputs X̃, λ = percdamp ·
// mean(diag G), α = perccorr. Dead input columns (diag G = 0) are zeroed.
// Scaling G and Δ by the same factor (e.g. 2/n) leaves the result unchanged.
at::Tensor qep_correct(const at::Tensor& w, const at::Tensor& gram, const at::Tensor& delta,
                       double percdamp, double perccorr);

// Per-layer results, one safetensors file: packed tensors as "<layer>/<name>"
// and the JSON report in the metadata key "qforge.results".
struct SavedLayer {
  LayerReport report;
  QuantResult result;  // dequantized is set only when no inference layer can rebuild it
};
void save_results(const std::string& path, const std::string& method,
                  const std::vector<SavedLayer>& layers);
std::vector<SavedLayer> load_results(const std::string& path);

// Writes `model_dir` with the saved results applied to `out_dir` in
// `save_format`, without quantizing again: each layer's dequantized weight is
// rebuilt through the inference layer of its format (or taken from the stored
// dequantized weight); gptq takes the packed tensors as they are.
void apply_results(const Registry& registry, const std::string& model_dir,
                   const std::string& results_file, const std::string& out_dir,
                   SaveFormat save_format = SaveFormat::dequantized);

}  // namespace qforge::host
