// config.json parsing and the architecture table (qforge_host/model/config.hpp).
#include "qforge_host/model/config.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"

namespace qforge::host {
namespace {

using nlohmann::json;

// A field reader that names the file and the field in every error.
struct Reader {
  const json& j;
  const std::string& source;

  [[noreturn]] void fail(const std::string& field, const std::string& what) const {
    throw UsageError(fmt::format("{}: field '{}' {}", source, field, what));
  }
  bool has(const char* f) const { return j.contains(f) && !j[f].is_null(); }
  int64_t integer(const char* f, int64_t min, int64_t max) const {
    if (!has(f)) fail(f, "is missing");
    return integer_value(f, j[f], min, max);
  }
  int64_t integer_or(const char* f, int64_t fallback, int64_t min, int64_t max) const {
    return has(f) ? integer_value(f, j[f], min, max) : fallback;
  }
  int64_t integer_value(const std::string& f, const json& v, int64_t min, int64_t max) const {
    if (!v.is_number_integer()) fail(f, "must be an integer");
    int64_t x = v.get<int64_t>();
    if (x < min || x > max) fail(f, fmt::format("= {} is outside [{}, {}]", x, min, max));
    return x;
  }
  double number_or(const char* f, double fallback, double min, double max) const {
    if (!has(f)) return fallback;
    if (!j[f].is_number()) fail(f, "must be a number");
    double x = j[f].get<double>();
    if (!(x >= min && x <= max)) fail(f, fmt::format("= {} is outside [{}, {}]", x, min, max));
    return x;
  }
  bool boolean_or(const char* f, bool fallback) const {
    if (!has(f)) return fallback;
    if (!j[f].is_boolean()) fail(f, "must be true or false");
    return j[f].get<bool>();
  }
  // A token id, or the first of a list of ids (Llama 3 lists several EOS ids).
  int64_t token_or(const char* f, int64_t vocab) const {
    if (!has(f)) return -1;
    const json& v = j[f];
    if (v.is_array()) {
      if (v.empty()) return -1;
      return integer_value(f, v[0], 0, vocab - 1);
    }
    return integer_value(f, v, 0, vocab - 1);
  }
};

constexpr int64_t kMaxDim = int64_t(1) << 20;

}  // namespace

const std::vector<ArchSpec>& arch_table() {
  // model_type, qkv_bias_always, qk_norm, uses_sliding_window, block layout
  const BlockLayout* llama = &llama_block_layout();
  static const std::vector<ArchSpec> table = {
      {"llama", false, false, false, llama},
      {"mistral", false, false, true, llama},
      {"qwen2", true, false, false, llama},
      {"qwen3", false, true, false, llama},
  };
  return table;
}

std::string supported_model_types() {
  std::string s;
  for (const auto& a : arch_table()) s += (s.empty() ? "" : ", ") + std::string(a.model_type);
  return s;
}

ModelConfig parse_config(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // e.g. "syntax error while parsing value - invalid literal; last read: 'NaN'"
    std::string what = e.what();
    if (auto colon = what.find("]: "); colon != std::string::npos) what = what.substr(colon + 3);
    throw UsageError(fmt::format("{}: not valid JSON ({})", source, what));
  }
  if (!j.is_object()) throw UsageError(fmt::format("{}: not a JSON object", source));
  Reader r{j, source};
  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string())
    r.fail("model_type", "is missing (supported: " + supported_model_types() + ")");
  std::string type = j["model_type"].get<std::string>();
  bool found = false;
  for (const auto& a : arch_table())
    if (type == a.model_type) c.arch = a, found = true;
  if (!found)
    throw UsageError(fmt::format("{}: unsupported model_type '{}' (supported: {})", source, type,
                                 supported_model_types()));
  if (r.has("hidden_act") && j["hidden_act"] != "silu")
    r.fail("hidden_act", "must be \"silu\" for the Llama family");

  c.hidden_size = r.integer("hidden_size", 1, kMaxDim);
  c.intermediate_size = r.integer("intermediate_size", 1, 4 * kMaxDim);
  c.num_layers = r.integer("num_hidden_layers", 1, 4096);
  c.num_heads = r.integer("num_attention_heads", 1, 4096);
  c.num_kv_heads = r.integer_or("num_key_value_heads", c.num_heads, 1, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    r.fail("num_key_value_heads", fmt::format("= {} does not divide num_attention_heads = {}",
                                              c.num_kv_heads, c.num_heads));
  if (r.has("head_dim")) {
    c.head_dim = r.integer("head_dim", 2, 4096);
  } else {
    if (c.hidden_size % c.num_heads != 0)
      r.fail("hidden_size", "is not a multiple of num_attention_heads (and head_dim is absent)");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for rotary embeddings");
  c.vocab_size = r.integer("vocab_size", 1, 16 * kMaxDim);
  c.max_position_embeddings = r.integer_or("max_position_embeddings", 2048, 1, 1 << 24);
  c.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6, 0, 1);
  c.rope_theta = r.number_or("rope_theta", 10000.0, 1e-6, 1e12);
  c.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  c.attention_bias = c.arch.qkv_bias_always || r.boolean_or("attention_bias", false);
  c.mlp_bias = r.boolean_or("mlp_bias", false);
  if (c.arch.uses_sliding_window)
    c.sliding_window = r.integer_or("sliding_window", 0, 0, 1 << 24);
  c.bos_token_id = r.token_or("bos_token_id", c.vocab_size);
  c.eos_token_id = r.token_or("eos_token_id", c.vocab_size);

  if (r.has("rope_scaling")) {
    const json& s = j["rope_scaling"];
    if (!s.is_object()) r.fail("rope_scaling", "must be an object or null");
    Reader rs{s, source};
    std::string kind = "default";
    for (const char* key : {"rope_type", "type"})
      if (s.contains(key)) {
        if (!s[key].is_string()) r.fail(std::string("rope_scaling.") + key, "must be a string");
        kind = s[key].get<std::string>();
        break;
      }
    c.rope_scaling.type = kind;
    if (kind == "llama3") {
      c.rope_scaling.factor = rs.number_or("factor", 1.0, 1e-6, 1e6);
      c.rope_scaling.low_freq_factor = rs.number_or("low_freq_factor", 1.0, 1e-6, 1e6);
      c.rope_scaling.high_freq_factor = rs.number_or("high_freq_factor", 4.0, 1e-6, 1e6);
      c.rope_scaling.original_max_position_embeddings =
          rs.integer_or("original_max_position_embeddings", 8192, 1, 1 << 24);
      if (c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor)
        r.fail("rope_scaling.high_freq_factor", "must exceed low_freq_factor");
    } else if (kind == "linear") {
      c.rope_scaling.factor = rs.number_or("factor", 1.0, 1e-6, 1e6);
    } else if (kind != "default") {
      r.fail("rope_scaling", fmt::format("type '{}' is not supported (default, linear, llama3)",
                                         kind));
    }
  }
  return c;
}

ModelConfig load_config(const std::string& path) {
  std::string file = path;
  if (file.size() < 5 || file.substr(file.size() - 5) != ".json") file += "/config.json";
  return parse_config(read_file(file, "model config", 16u << 20), file);  // FIFOs refused
}

}  // namespace qforge::host
