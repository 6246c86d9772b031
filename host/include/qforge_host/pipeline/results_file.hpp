// The per-layer results file (quant_results.safetensors): each layer's packed
// tensors as "<layer>/<name>" and a JSON report (format, metadata, error
// figures) in the metadata key "qforge.results", and the other parameters
// pre-processes changed (so that re-applying the results rebuilds the same
// model). The pipeline writes one per block while it runs (for --resume) and
// merges them at the end.
#pragma once

#include <map>
#include <utility>
#include <string>
#include <vector>

#include "qforge_host/plugins/abi_bridge.hpp"

namespace qforge::host {

struct LayerReport {
  std::string name;
  std::string format;
  std::string metadata;
  std::map<std::string, double> metrics;  // see error_metrics()
};

struct SavedLayer {
  LayerReport report;
  QuantResult result;  // dequantized is set only when no inference layer can rebuild it
};

// Other parameters a pre-process replaced (norm weights, ...), by name.
using ParamList = std::vector<std::pair<std::string, at::Tensor>>;

// `params` are stored as "params/<name>" and listed in the report's "params".
void save_results(const std::string& path, const std::string& method,
                  const std::vector<SavedLayer>& layers, const ParamList& params = {});
std::vector<SavedLayer> load_results(const std::string& path);
// The parameters stored beside the layers (none for a run without pre-processes).
ParamList load_result_params(const std::string& path);

// Replaces the results of the layers in `tuned` (same format, parameters
// tuned by a post-process) in the results file at `path`, rewritten
// atomically; the reports stay the quantizer's.
void update_results(const std::string& path, const std::map<std::string, QuantResult>& tuned);
// Merges per-block results files into one at `path` (from mapped views: no
// copy of every layer's packed tensors in memory at once); returns the reports.
std::vector<LayerReport> merge_results(const std::vector<std::string>& parts,
                                       const std::string& method, const std::string& path);

}  // namespace qforge::host
