// Using saved per-layer results without quantizing again: as a checkpoint
// (through any BlockSink) or as packed layers in a loaded model.
#pragma once

#include <string>
#include <vector>

#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qforge::host {

// Writes `model_dir` with the results of `results_file` applied, block by
// block, to `sink`: each layer's dequantized weight is rebuilt through the
// inference layer of its format (or taken from the stored dequantized
// weight), and its packed tensors go to the sink as they are.
void apply_results(const Registry& registry, const std::string& model_dir,
                   const std::string& results_file, BlockSink& sink);

// Gives every linear of `model` named in `layers` the inference layer of its
// format (its dense weight is dropped). Returns false, changing nothing,
// when some format has no loaded inference layer.
bool attach_packed_layers(const Registry& registry, Model& model,
                          const std::vector<SavedLayer>& layers);

}  // namespace qforge::host
