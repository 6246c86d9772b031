// The block layout of the Llama family as data: the names of a block's
// linear layers and their true-sequential stages (layers in one stage share
// one input). The pipeline, the save formats and the model read it here;
// nothing else spells "model.layers.N" or a linear's name.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qforge::host {

struct BlockLayout {
  std::string layer_prefix;                       // "model.layers."
  // Linear suffixes in true-sequential order, grouped by shared input:
  // {q,k,v}, {o}, {gate,up}, {down} for Llama.
  std::vector<std::vector<std::string>> stages;

  // "model.layers.<block>."
  std::string prefix(int64_t block) const;
  // The block a tensor or layer name belongs to ("model.layers.3.mlp.up_proj" -> 3).
  std::optional<int64_t> block_of(std::string_view name) const;
  // Every linear suffix of a block, in stage order.
  std::vector<std::string> linears() const;
  // Every linear name of block `block`, in stage order.
  std::vector<std::string> linear_names(int64_t block) const;
};

// Llama, Mistral, Qwen2, Qwen3 (model/config.hpp's arch table points here).
const BlockLayout& llama_block_layout();

}  // namespace qforge::host
