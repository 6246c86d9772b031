// Model configuration from a Hugging Face config.json, with the architecture
// table (Llama 2/3, Mistral, Qwen2, Qwen3) as data, not a class per model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qforge_host/model/architecture.hpp"

namespace qforge::host {

// What distinguishes one Llama-family architecture from another.
struct ArchSpec {
  const char* model_type;      // config.json "model_type"
  bool qkv_bias_always;        // q/k/v projections carry a bias whatever the config says (Qwen2)
  bool qk_norm;                // RMSNorm over head_dim on q and k before RoPE (Qwen3)
  bool uses_sliding_window;    // honours "sliding_window" (Mistral)
  const BlockLayout* layout;   // linear names and true-sequential stages of a block
};

// The supported architectures, in the order `supported_model_types()` lists them.
const std::vector<ArchSpec>& arch_table();
std::string supported_model_types();  // "llama, mistral, qwen2, qwen3"

struct RopeScaling {
  std::string type = "default";  // "default", "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  ArchSpec arch{};
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v (and o for Llama when set) biases
  bool mlp_bias = false;
  int64_t sliding_window = 0;   // 0 = none
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;
};

// Reads and validates `<dir>/config.json` (or a config.json path). Throws
// UsageError naming the file and the field; an unsupported model_type lists
// the supported ones.
ModelConfig load_config(const std::string& path);
ModelConfig parse_config(const std::string& json_text, const std::string& source);

}  // namespace qforge::host
