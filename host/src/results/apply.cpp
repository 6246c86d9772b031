#include "qforge_host/results/apply.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <map>
#include <set>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"

namespace qforge::host {

void apply_results(const Registry& registry, const std::string& model_dir,
                   const std::string& results_file, BlockSink& sink) {
  at::NoGradGuard no_grad;
  const std::vector<SavedLayer> saved = load_results(results_file);
  std::map<std::string, at::Tensor> weights;
  std::map<std::string, const QuantResult*> packed;
  std::vector<std::string> names;
  std::set<std::string> formats;
  std::vector<LayerReport> reports;
  for (const auto& l : saved) {
    packed[l.report.name] = &l.result;
    names.push_back(l.report.name);
    formats.insert(l.result.format);
    reports.push_back(l.report);
    if (l.result.dequantized.defined()) {
      weights[l.report.name] = l.result.dequantized;
      continue;
    }
    const Component* c = registry.find_inference_layer(l.result.format);
    if (c == nullptr)
      throw UsageError(fmt::format("{}: no loaded inference layer reads format {} (layer {})",
                                   results_file, l.result.format, l.report.name));
    weights[l.report.name] = PackedLayer(*c, l.result).dequantize();
  }
  // What pre-processes changed besides the quantized linears (norms, ...).
  std::map<std::string, at::Tensor> params;
  for (auto& [name, t] : load_result_params(results_file)) params[name] = t;
  Model model = Model::load(model_dir, at::kFloat, false);
  const TensorStore& store = model.store();
  sink.check_plan(std::vector<std::string>(formats.begin(), formats.end()), names);
  // Check every layer against the model before writing anything.
  for (const auto& [name, w] : weights) {
    if (!store.contains(name + ".weight"))
      throw UsageError(fmt::format("{}: layer {} is not in {}", results_file, name, model_dir));
    if (store.info(name + ".weight").shape != w.sizes().vec())
      throw UsageError(fmt::format("{}: layer {} has the wrong shape for {}", results_file, name,
                                   model_dir));
  }
  for (const auto& [name, value] : params)
    if (!store.contains(name) || store.info(name).shape != value.sizes().vec() ||
        !model.config().arch.layout->block_of(name))
      throw UsageError(fmt::format("{}: parameter {} is not a block parameter of {} with that "
                                   "shape", results_file, name, model_dir));
  for (int64_t i = 0; i < model.config().num_layers; ++i) {
    model.load_block(i);
    Block& b = model.blocks()[i];
    const std::string prefix = model.config().arch.layout->prefix(i);
    for (auto& [name, value] : params)
      if (at::Tensor* t = b.parameter(prefix, name)) *t = value;
    for (Linear* l : b.linears())
      if (auto it = weights.find(l->name); it != weights.end()) l->weight = it->second;
    sink.write_block(i, b, packed);
    model.release_block(i);
  }
  sink.finish(reports);
}

bool attach_packed_layers(const Registry& registry, Model& model,
                          const std::vector<SavedLayer>& layers) {
  std::map<std::string, const SavedLayer*> by_name;
  for (const auto& l : layers) {
    if (registry.find_inference_layer(l.result.format) == nullptr) return false;
    by_name[l.report.name] = &l;
  }
  for (auto& b : model.blocks())
    for (Linear* l : b.linears())
      if (auto it = by_name.find(l->name); it != by_name.end()) {
        l->packed = std::make_shared<PackedLayer>(
            *registry.find_inference_layer(it->second->result.format), it->second->result);
        l->weight = at::Tensor();
      }
  return true;
}

}  // namespace qforge::host
