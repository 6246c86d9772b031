// PEFT LoRA adapters (qforge_host/save/peft.hpp).
#include "qforge_host/save/peft.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

constexpr const char* kFormat = "peft.lora/1";
constexpr const char* kPrefix = "base_model.model.";

// y += s·(x·Aᵀ)·Bᵀ, in float32.
class Lora final : public LinearAdapter {
 public:
  Lora(at::Tensor a, at::Tensor b, double scaling) : a_(std::move(a)), b_(std::move(b)), s_(scaling) {}
  at::Tensor forward(const at::Tensor& x) const override {
    return at::matmul(at::matmul(x.to(at::kFloat), a_.t()), b_.t()).mul_(s_).to(x.scalar_type());
  }
  bool merge_into(at::Tensor& weight) const override {
    weight.add_(at::matmul(b_, a_), s_);
    return true;
  }

 private:
  at::Tensor a_, b_;
  double s_;
};

std::string leaf(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

// PEFT's pattern match for rank_pattern / alpha_pattern keys: the module
// name is the key or ends with "." + key.
bool matches(const std::string& name, const std::string& key) {
  return name == key || (name.size() > key.size() &&
                         name.compare(name.size() - key.size(), key.size(), key) == 0 &&
                         name[name.size() - key.size() - 1] == '.');
}

std::map<std::string, Linear*> linears_of(Model& model) {
  std::map<std::string, Linear*> out;
  for (Block& b : model.blocks())
    for (Linear* l : b.linears()) out[l->name] = l;
  return out;
}

}  // namespace

void write_peft_adapter(const std::string& dir, const std::vector<AdapterExport>& adapters,
                        const std::string& base_model) {
  if (adapters.empty()) throw UsageError("no adapter to write");
  // The first adapter's r and alpha are the defaults; others go to the patterns.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::set<std::string> targets;
  ordered_json rank_pattern = ordered_json::object(), alpha_pattern = ordered_json::object();
  int64_t r0 = 0;
  double alpha0 = 0, dropout0 = 0;
  for (size_t i = 0; i < adapters.size(); ++i) {
    const AdapterExport& a = adapters[i];
    if (a.format != kFormat)
      throw UsageError(fmt::format("the adapter on {} is '{}', not a PEFT LoRA adapter ({})", a.layer,
                                   a.format, kFormat));
    json meta = json::parse(a.metadata, nullptr, false);
    if (!meta.is_object() || !meta.contains("r") || !meta["r"].is_number_integer() ||
        !meta.contains("lora_alpha") || !meta["lora_alpha"].is_number())
      throw UsageError(fmt::format("the adapter on {}: metadata without integer r and lora_alpha", a.layer));
    const int64_t r = meta["r"].get<int64_t>();
    const double alpha = meta["lora_alpha"].get<double>();
    at::Tensor A, B;
    for (const auto& [name, t] : a.params) {
      if (name == "lora_A") A = t;
      if (name == "lora_B") B = t;
    }
    if (!A.defined() || !B.defined() || A.dim() != 2 || B.dim() != 2 || A.size(0) != r ||
        B.size(1) != r)
      throw UsageError(fmt::format("the adapter on {}: lora_A [r, in] and lora_B [out, r] with r = {} expected",
                                   a.layer, r));
    if (i == 0) {
      r0 = r;
      alpha0 = alpha;
      dropout0 = meta.value("lora_dropout", 0.0);
    } else {
      if (r != r0) rank_pattern[a.layer] = r;
      if (alpha != alpha0) alpha_pattern[a.layer] = alpha;
    }
    targets.insert(leaf(a.layer));
    tensors.emplace_back(kPrefix + a.layer + ".lora_A.weight", A.to(at::kFloat).contiguous());
    tensors.emplace_back(kPrefix + a.layer + ".lora_B.weight", B.to(at::kFloat).contiguous());
  }
  ordered_json config = {
      {"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"base_model_name_or_path", base_model},
      {"r", r0}, {"lora_alpha", alpha0}, {"lora_dropout", dropout0},
      {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
      {"rank_pattern", rank_pattern}, {"alpha_pattern", alpha_pattern}, {"bias", "none"},
      {"fan_in_fan_out", false}, {"use_rslora", false}, {"use_dora", false},
      {"modules_to_save", nullptr}, {"init_lora_weights", true}, {"inference_mode", true},
      {"layers_to_transform", nullptr}, {"revision", nullptr}};
  // Complete or absent: written in a temporary directory, then renamed.
  const fs::path target(dir);
  const fs::path tmp = target.string() + fmt::format(".tmp-{}", ::getpid());
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_safetensors((tmp / "adapter_model.safetensors").string(), tensors, {{"format", "pt"}});
  write_text_atomic((tmp / "adapter_config.json").string(), config.dump(2) + "\n");
  const fs::path old = target.string() + fmt::format(".old-{}", ::getpid());
  std::error_code ec;
  if (fs::exists(target)) fs::rename(target, old);
  fs::rename(tmp, target);
  fs::remove_all(old, ec);
}

void apply_peft_adapter(Model& model, const std::string& dir) {
  const fs::path cfg_path = fs::path(dir) / "adapter_config.json";
  const fs::path st_path = fs::path(dir) / "adapter_model.safetensors";
  if (!fs::is_directory(dir))
    throw UsageError(fmt::format("--adapter {}: not a directory (a PEFT adapter is a directory "
                                 "with adapter_config.json and adapter_model.safetensors)", dir));
  const std::string where = cfg_path.string();
  json c = json::parse(read_file(where, "adapter config"), nullptr, false);
  if (!c.is_object()) throw ModelFileError(fmt::format("{}: not a JSON object", where));
  auto bad = [&](const std::string& what) { return ModelFileError(fmt::format("{}: {}", where, what)); };
  if (c.value("peft_type", std::string()) != "LORA") throw bad("peft_type is not \"LORA\"");
  if (!c.contains("r") || !c["r"].is_number_integer() || c["r"].get<int64_t>() < 1)
    throw bad("\"r\" must be a positive integer");
  if (!c.contains("lora_alpha") || !c["lora_alpha"].is_number()) throw bad("\"lora_alpha\" must be a number");
  auto flag = [&](const char* key) {
    if (!c.contains(key) || c[key].is_null()) return false;
    if (!c[key].is_boolean()) throw bad(fmt::format("\"{}\" must be true or false", key));
    return c[key].get<bool>();
  };
  if (flag("fan_in_fan_out")) throw bad("fan_in_fan_out adapters (Conv1D layers) are not supported");
  if (flag("use_dora")) throw bad("DoRA adapters are not supported");
  const bool rslora = flag("use_rslora");
  if (c.contains("bias") && c["bias"] != "none") throw bad("only \"bias\": \"none\" is supported");
  if (c.contains("modules_to_save") && !c["modules_to_save"].is_null() &&
      !(c["modules_to_save"].is_array() && c["modules_to_save"].empty()))
    throw bad("modules_to_save is not supported");
  const int64_t r_default = c["r"].get<int64_t>();
  const double alpha_default = c["lora_alpha"].get<double>();
  auto pattern = [&](const char* key) {
    json p = c.value(key, json::object());
    if (p.is_null()) p = json::object();
    if (!p.is_object()) throw bad(fmt::format("\"{}\" must be an object", key));
    for (const auto& [k, v] : p.items())
      if (!v.is_number()) throw bad(fmt::format("\"{}\".\"{}\" must be a number", key, k));
    return p;
  };
  const json rank_pattern = pattern("rank_pattern"), alpha_pattern = pattern("alpha_pattern");

  SafetensorsFile st(st_path.string());
  std::map<std::string, Linear*> linears = linears_of(model);
  struct Pair {
    at::Tensor a, b;
  };
  std::map<std::string, Pair> pairs;
  for (const auto& [name, info] : st.tensors()) {
    const bool is_a = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_A.weight") == 0;
    const bool is_b = name.size() > 14 && name.compare(name.size() - 14, 14, ".lora_B.weight") == 0;
    if (name.rfind(kPrefix, 0) != 0 || !(is_a || is_b))
      throw ModelFileError(fmt::format("{}: tensor '{}' is not a LoRA A or B weight "
                                       "(base_model.model.<module>.lora_[AB].weight)", st_path.string(), name));
    const std::string module = name.substr(std::string(kPrefix).size(), name.size() - std::string(kPrefix).size() - 14);
    if (!linears.count(module))
      throw ModelFileError(fmt::format("{}: tensor '{}' names '{}', which is not a linear layer of the model",
                                       st_path.string(), name, module));
    at::Tensor t = st.load(name, at::kFloat);
    if (!all_finite(t)) throw ModelFileError(fmt::format("{}: tensor '{}' holds non-finite values", st_path.string(), name));
    (is_a ? pairs[module].a : pairs[module].b) = t;
  }
  if (pairs.empty()) throw ModelFileError(fmt::format("{}: no LoRA weights", st_path.string()));
  for (auto& [module, p] : pairs) {
    if (!p.a.defined() || !p.b.defined())
      throw ModelFileError(fmt::format("{}: '{}' has lora_{} but not lora_{}", st_path.string(),
                                       module, p.a.defined() ? "A" : "B", p.a.defined() ? "B" : "A"));
    int64_t r = r_default;
    double alpha = alpha_default;
    for (const auto& [k, v] : rank_pattern.items())
      if (matches(module, k)) r = v.get<int64_t>();
    for (const auto& [k, v] : alpha_pattern.items())
      if (matches(module, k)) alpha = v.get<double>();
    Linear& l = *linears[module];
    const int64_t out = l.packed ? l.packed->out_features() : l.weight.size(0);
    const int64_t in = l.packed ? l.packed->in_features() : l.weight.size(1);
    if (p.a.dim() != 2 || p.b.dim() != 2 || p.a.size(0) != r || p.a.size(1) != in ||
        p.b.size(0) != out || p.b.size(1) != r)
      throw ModelFileError(fmt::format(
          "{}: '{}' has lora_A [{}] and lora_B [{}]; the layer [{}, {}] with r = {} needs [{}, {}] and [{}, {}]",
          st_path.string(), module, fmt::join(p.a.sizes(), ", "), fmt::join(p.b.sizes(), ", "), out, in,
          r, r, in, out, r));
    if (l.adapter) throw UsageError(fmt::format("{} already has an adapter", module));
    const double scaling = rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
    l.adapter = std::make_shared<Lora>(p.a, p.b, scaling);
  }
}

void apply_adapters(Model& model, const std::vector<AdapterExport>& adapters) {
  std::map<std::string, Linear*> linears = linears_of(model);
  for (const AdapterExport& a : adapters) {
    if (a.format != kFormat)
      throw UsageError(fmt::format("the adapter on {} is '{}'; qforge keeps only {} adapters", a.layer,
                                   a.format, kFormat));
    json meta = json::parse(a.metadata, nullptr, false);
    at::Tensor A, B;
    for (const auto& [name, t] : a.params) (name == "lora_A" ? A : B) = t;
    const double scaling = meta.at("lora_alpha").get<double>() / meta.at("r").get<double>();
    Linear* l = linears.at(a.layer);
    if (l->adapter) throw UsageError(fmt::format("{} already has an adapter", a.layer));
    l->adapter = std::make_shared<Lora>(A.to(at::kFloat), B.to(at::kFloat), scaling);
  }
}

void merge_adapters(Model& model) {
  for (Block& b : model.blocks())
    for (Linear* l : b.linears()) {
      if (!l->adapter) continue;
      at::Tensor w = l->packed ? l->packed->dequantize() : l->weight.to(at::kFloat).contiguous().clone();
      if (!l->adapter->merge_into(w))
        throw UsageError(fmt::format("the adapter on {} cannot be folded into its weight", l->name));
      l->weight = w.to(model.dtype());
      l->packed.reset();
      l->adapter.reset();
    }
}

}  // namespace qforge::host
