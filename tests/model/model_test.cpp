// The model runtime: each Llama-family variant against a plain float64
// implementation written here, the KV cache, and config errors.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "qforge_host/model/config.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using qforge::host::Model;

namespace {

using Weights = std::map<std::string, at::Tensor>;

// ---- a plain reference: one position and one head at a time, float64 ----------

struct Ref {
  json cfg;
  Weights w;  // float64
  int64_t H, nh, nkv, D, I, L;
  double eps;
  std::vector<double> inv_freq;

  Ref(json c, const Weights& weights) : cfg(std::move(c)) {
    for (const auto& [k, v] : weights) w[k] = v.to(at::kDouble);
    H = cfg["hidden_size"];
    nh = cfg["num_attention_heads"];
    nkv = cfg.value("num_key_value_heads", nh);
    D = cfg.contains("head_dim") ? cfg["head_dim"].get<int64_t>() : H / nh;
    I = cfg["intermediate_size"];
    L = cfg["num_hidden_layers"];
    eps = cfg["rms_norm_eps"];
    double theta = cfg.value("rope_theta", 10000.0);
    for (int64_t i = 0; i < D / 2; ++i) {
      double f = std::pow(theta, -2.0 * i / D);
      if (cfg.contains("rope_scaling") && cfg["rope_scaling"].is_object()) {
        const json& s = cfg["rope_scaling"];
        double factor = s["factor"], lo = s["low_freq_factor"], hi = s["high_freq_factor"];
        double old = s["original_max_position_embeddings"];
        double wl = 2 * M_PI / f;
        if (wl > old / lo) f = f / factor;
        else if (wl >= old / hi) {
          double t = (old / wl - lo) / (hi - lo);
          f = (1 - t) * f / factor + t * f;
        }
      }
      inv_freq.push_back(f);
    }
  }
  bool has(const std::string& k) const { return w.count(k) > 0; }
  at::Tensor lin(const at::Tensor& x, const std::string& name) const {
    at::Tensor y = at::matmul(x, w.at(name + ".weight").t());
    if (has(name + ".bias")) y = y + w.at(name + ".bias");
    return y;
  }
  at::Tensor norm(const at::Tensor& x, const at::Tensor& g) const {
    return x / at::sqrt(x.pow(2).mean({-1}, true) + eps) * g;
  }
  void rope(at::Tensor row, int64_t pos) const {  // row: [D], in place
    auto a = row.accessor<double, 1>();
    for (int64_t i = 0; i < D / 2; ++i) {
      double c = std::cos(pos * inv_freq[i]), s = std::sin(pos * inv_freq[i]);
      double x0 = a[i], x1 = a[i + D / 2];
      a[i] = x0 * c - x1 * s;
      a[i + D / 2] = x1 * c + x0 * s;
    }
  }
  at::Tensor logits(const std::vector<int64_t>& ids) const {
    int64_t T = ids.size();
    int64_t window = cfg.value("model_type", "") == "mistral" ? cfg.value("sliding_window", 0) : 0;
    at::Tensor h = w.at("model.embed_tokens.weight").index_select(0, at::tensor(ids, at::kLong));
    for (int64_t l = 0; l < L; ++l) {
      std::string p = "model.layers." + std::to_string(l) + ".";
      at::Tensor x = norm(h, w.at(p + "input_layernorm.weight"));
      at::Tensor q = lin(x, p + "self_attn.q_proj"), k = lin(x, p + "self_attn.k_proj"),
                 v = lin(x, p + "self_attn.v_proj");
      at::Tensor heads = at::zeros({T, nh * D}, at::kDouble);
      for (int64_t hq = 0; hq < nh; ++hq) {
        int64_t hk = hq / (nh / nkv);
        at::Tensor qh = q.narrow(1, hq * D, D).clone(), kh = k.narrow(1, hk * D, D).clone();
        at::Tensor vh = v.narrow(1, hk * D, D);
        if (has(p + "self_attn.q_norm.weight")) {
          qh = norm(qh, w.at(p + "self_attn.q_norm.weight"));
          kh = norm(kh, w.at(p + "self_attn.k_norm.weight"));
        }
        for (int64_t t = 0; t < T; ++t) rope(qh[t], t), rope(kh[t], t);
        for (int64_t t = 0; t < T; ++t) {
          std::vector<double> sc;
          double mx = -INFINITY;
          for (int64_t s = 0; s <= t; ++s) {
            bool visible = window == 0 || s > t - window;
            double z = visible ? at::dot(qh[t], kh[s]).item<double>() / std::sqrt(double(D)) : -INFINITY;
            sc.push_back(z);
            mx = std::max(mx, z);
          }
          double sum = 0;
          for (double& z : sc) sum += (z = std::exp(z - mx));
          at::Tensor o = at::zeros({D}, at::kDouble);
          for (int64_t s = 0; s <= t; ++s) o += sc[s] / sum * vh[s];
          heads[t].narrow(0, hq * D, D).copy_(o);
        }
      }
      h = h + lin(heads, p + "self_attn.o_proj");
      x = norm(h, w.at(p + "post_attention_layernorm.weight"));
      at::Tensor g = lin(x, p + "mlp.gate_proj");
      h = h + lin(g * at::sigmoid(g) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj");
    }
    h = norm(h, w.at("model.norm.weight"));
    const at::Tensor& head = has("lm_head.weight") ? w.at("lm_head.weight") : w.at("model.embed_tokens.weight");
    return at::matmul(h, head.t());
  }
};

// ---- random checkpoints ------------------------------------------------------------

json base_config(const std::string& type) {
  return json{{"model_type", type}, {"hidden_size", 32}, {"intermediate_size", 48},
              {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
              {"vocab_size", 64}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0}, {"hidden_act", "silu"}, {"tie_word_embeddings", false},
              {"bos_token_id", 1}, {"eos_token_id", 2}};
}

Weights random_weights(const json& c, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto rnd = [&](std::vector<int64_t> shape, double scale = 0.2) {
    return at::normal(0.0, scale, shape, gen);
  };
  auto gain = [&](int64_t n) { return 1.0 + at::normal(0.0, 0.1, {n}, gen); };
  int64_t H = c["hidden_size"], nh = c["num_attention_heads"], nkv = c["num_key_value_heads"];
  int64_t D = c.contains("head_dim") ? c["head_dim"].get<int64_t>() : H / nh;
  int64_t I = c["intermediate_size"], V = c["vocab_size"];
  std::string type = c["model_type"];
  bool qkv_bias = type == "qwen2" || c.value("attention_bias", false);
  bool o_bias = type != "qwen2" && c.value("attention_bias", false);
  bool mlp_bias = c.value("mlp_bias", false);
  Weights w;
  w["model.embed_tokens.weight"] = rnd({V, H}, 1.0);
  w["model.norm.weight"] = gain(H);
  if (!c.value("tie_word_embeddings", false)) w["lm_head.weight"] = rnd({V, H});
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l) {
    std::string p = "model.layers." + std::to_string(l) + ".";
    w[p + "input_layernorm.weight"] = gain(H);
    w[p + "post_attention_layernorm.weight"] = gain(H);
    auto linear = [&](const std::string& n, int64_t out, int64_t in, bool bias) {
      w[p + n + ".weight"] = rnd({out, in});
      if (bias) w[p + n + ".bias"] = rnd({out}, 0.1);
    };
    linear("self_attn.q_proj", nh * D, H, qkv_bias);
    linear("self_attn.k_proj", nkv * D, H, qkv_bias);
    linear("self_attn.v_proj", nkv * D, H, qkv_bias);
    linear("self_attn.o_proj", H, nh * D, o_bias);
    if (type == "qwen3") {
      w[p + "self_attn.q_norm.weight"] = gain(D);
      w[p + "self_attn.k_norm.weight"] = gain(D);
    }
    linear("mlp.gate_proj", I, H, mlp_bias);
    linear("mlp.up_proj", I, H, mlp_bias);
    linear("mlp.down_proj", H, I, mlp_bias);
  }
  return w;
}

std::string write_model(const std::string& name, const json& c, const Weights& w) {
  fs::path dir = fs::temp_directory_path() / ("qforge_model_test_" + name + "_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << c.dump(2);
  std::vector<std::pair<std::string, at::Tensor>> list(w.begin(), w.end());
  qforge::host::save_safetensors((dir / "model.safetensors").string(), list);
  return dir.string();
}

struct Variant {
  std::string name;
  json config;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"llama2", base_config("llama")});
  json l3 = base_config("llama");
  l3["rope_theta"] = 100.0;  // so one frequency falls in llama3's interpolated band
  l3["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}};
  l3["eos_token_id"] = json::array({2, 3});
  v.push_back({"llama3_rope", l3});
  json lb = base_config("llama");
  lb["attention_bias"] = true;
  lb["mlp_bias"] = true;
  lb["num_key_value_heads"] = 4;
  v.push_back({"llama_bias_mha", lb});
  json m = base_config("mistral");
  m["sliding_window"] = 4;
  v.push_back({"mistral_window", m});
  json q2 = base_config("qwen2");
  q2["tie_word_embeddings"] = true;
  q2["num_key_value_heads"] = 1;
  v.push_back({"qwen2_tied", q2});
  json q3 = base_config("qwen3");
  q3["head_dim"] = 16;  // not hidden/heads
  v.push_back({"qwen3_qknorm", q3});
  return v;
}

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class Variants : public ::testing::TestWithParam<Variant> {};

TEST_P(Variants, LogitsMatchThePlainImplementation) {
  const Variant& var = GetParam();
  Weights w = random_weights(var.config, 7);
  std::string dir = write_model(var.name, var.config, w);
  Model model = Model::load(dir, at::kFloat);
  std::vector<int64_t> ids = {1, 5, 9, 33, 2, 60, 17, 17, 4, 40};
  at::Tensor got = model.forward(at::tensor(ids, at::kLong).unsqueeze(0)).squeeze(0).to(at::kDouble);
  at::Tensor want = Ref(var.config, w).logits(ids);
  double err = (got - want).abs().max().item<double>();
  EXPECT_LT(err, 1e-4 * std::max(1.0, want.abs().max().item<double>())) << var.name;

  // The KV cache: prefill 4 tokens, then one at a time, equals the full pass.
  auto cache = model.new_cache(1, ids.size());
  at::Tensor all = at::tensor(ids, at::kLong).unsqueeze(0);
  std::vector<at::Tensor> parts = {model.forward(all.narrow(1, 0, 4), &cache)};
  for (size_t t = 4; t < ids.size(); ++t) parts.push_back(model.forward(all.narrow(1, t, 1), &cache));
  at::Tensor inc = at::cat(parts, 1).squeeze(0).to(at::kDouble);
  EXPECT_LT((inc - got).abs().max().item<double>(), 1e-4) << var.name << " (KV cache)";

  // A batch of two sequences equals each alone.
  at::Tensor two = at::stack({all.squeeze(0), all.squeeze(0).flip(0)});
  at::Tensor both = model.forward(two);
  at::Tensor second = model.forward(two.narrow(0, 1, 1));
  EXPECT_LT((both[1] - second[0]).abs().max().item<double>(), 1e-4) << var.name << " (batch)";
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Llama, Variants, ::testing::ValuesIn(variants()),
                         [](const auto& info) { return info.param.name; });

std::string config_error(const json& c) {
  try {
    qforge::host::parse_config(c.dump(), "config.json");
  } catch (const qforge::host::UsageError& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(Config, UnsupportedModelTypeListsTheSupportedOnes) {
  std::string m = config_error(base_config("gpt2"));
  EXPECT_NE(m.find("unsupported model_type 'gpt2'"), std::string::npos) << m;
  EXPECT_NE(m.find("llama, mistral, qwen2, qwen3"), std::string::npos) << m;
}

TEST(Config, BadFieldsAreNamed) {
  json c = base_config("llama");
  c["num_key_value_heads"] = 3;
  EXPECT_NE(config_error(c).find("num_key_value_heads"), std::string::npos);
  c = base_config("llama");
  c.erase("hidden_size");
  EXPECT_NE(config_error(c).find("'hidden_size' is missing"), std::string::npos);
  c = base_config("llama");
  c["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 2.0}};
  EXPECT_NE(config_error(c).find("yarn"), std::string::npos);
  c = base_config("llama");
  c["hidden_size"] = "big";
  EXPECT_NE(config_error(c).find("hidden_size"), std::string::npos);
  EXPECT_NE(config_error(json::array()).find("not a JSON object"), std::string::npos);
  c = base_config("llama");
  c["vocab_size"] = -1;
  EXPECT_NE(config_error(c).find("vocab_size"), std::string::npos);
}

TEST(Config, EosListTakesTheFirstId) {
  json c = base_config("llama");
  c["eos_token_id"] = json::array({2, 3});
  EXPECT_EQ(qforge::host::parse_config(c.dump(), "x").eos_token_id, 2);
}

TEST(Model, WrongTensorShapeIsNamed) {
  json c = base_config("llama");
  Weights w = random_weights(c, 1);
  w["model.layers.1.mlp.up_proj.weight"] = at::zeros({47, 32});
  std::string dir = write_model("badshape", c, w);
  try {
    Model::load(dir, at::kFloat);
    FAIL() << "accepted a wrong shape";
  } catch (const qforge::host::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj.weight"), std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

}  // namespace
