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
  // Per stage, the module whose output channels are the stage's input
  // channels one to one: a norm ("input_layernorm": its weight) or a linear
  // ("self_attn.v_proj": its weight's rows and its bias), where scaling them
  // by 1/s and the stage's input columns by s keeps the block's function.
  // Llama: input_layernorm → q,k,v; v_proj → o (only when v_proj has as many
  // rows as o_proj has inputs, i.e. not under grouped-query attention);
  // post_attention_layernorm → gate,up; up_proj → down (the MLP multiplies
  // up's output elementwise).
  std::vector<std::string> stage_sources;

  // "model.layers.<block>."
  std::string prefix(int64_t block) const;
  // The block a tensor or layer name belongs to ("model.layers.3.mlp.up_proj" -> 3).
  std::optional<int64_t> block_of(std::string_view name) const;
  // Every linear suffix of a block, in stage order.
  std::vector<std::string> linears() const;
  // The stage index of a linear suffix ("mlp.up_proj" -> 2), or nullopt.
  std::optional<size_t> stage_of(std::string_view suffix) const;
  // Every linear name of block `block`, in stage order.
  std::vector<std::string> linear_names(int64_t block) const;
};

// Llama, Mistral, Qwen2, Qwen3 (model/config.hpp's arch table points here).
const BlockLayout& llama_block_layout();

}  // namespace qforge::host
