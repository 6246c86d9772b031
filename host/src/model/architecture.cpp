#include "qforge_host/model/architecture.hpp"

#include <charconv>

namespace qforge::host {

std::string BlockLayout::prefix(int64_t block) const {
  return layer_prefix + std::to_string(block) + ".";
}

std::optional<int64_t> BlockLayout::block_of(std::string_view name) const {
  if (name.substr(0, layer_prefix.size()) != layer_prefix) return std::nullopt;
  std::string_view rest = name.substr(layer_prefix.size());
  int64_t block = -1;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), block);
  if (ec != std::errc() || block < 0 || end == rest.data() + rest.size() || *end != '.')
    return std::nullopt;
  return block;
}

std::vector<std::string> BlockLayout::linears() const {
  std::vector<std::string> out;
  for (const auto& stage : stages) out.insert(out.end(), stage.begin(), stage.end());
  return out;
}

std::optional<size_t> BlockLayout::stage_of(std::string_view suffix) const {
  for (size_t k = 0; k < stages.size(); ++k)
    for (const auto& s : stages[k])
      if (s == suffix) return k;
  return std::nullopt;
}

std::vector<std::string> BlockLayout::linear_names(int64_t block) const {
  std::vector<std::string> out;
  for (const auto& s : linears()) out.push_back(prefix(block) + s);
  return out;
}

const BlockLayout& llama_block_layout() {
  static const BlockLayout layout{
      "model.layers.",
      {{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
       {"self_attn.o_proj"},
       {"mlp.gate_proj", "mlp.up_proj"},
       {"mlp.down_proj"}},
      {"input_layernorm", "self_attn.v_proj", "post_attention_layernorm", "mlp.up_proj"}};
  return layout;
}

}  // namespace qforge::host
