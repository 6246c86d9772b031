// --save-format qforge: qforge's own checkpoint, which holds any packed
// format as it is (DESIGN.md "Packed formats are data"). Each quantized
// linear keeps the tensors its quantizer produced, bit for bit and in their
// own dtypes, as "<layer>.<tensor>"; config.json's quantization_config says,
// per quantized layer, its packed format id, metadata and tensor names:
//
//   {"quant_method": "qforge", "format_version": 1,
//    "layers": {"model.layers.0.self_attn.q_proj":
//                 {"format": "org.qforge.rtn/1", "metadata": {...},
//                  "tensors": ["qweight", "scales", "zeros"]}, ...}}
//
// Layers left out and lm_head stay float16 dense. Reading it back gives each
// layer to the loaded inference layer of its format, so a third-party format
// round-trips through its own plugin: this file names no packed format and
// no method. Only qforge reads it (no serving engine knows the layout).
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <set>

#include "formats.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

constexpr const char* kQuantMethod = "qforge";
constexpr int64_t kFormatVersion = 1;
constexpr size_t kMaxTensorName = 64;

// Why `t` cannot name a packed tensor, or "" when it can. Letters, digits and
// '_' only: "<layer>.<tensor>" then splits unambiguously at its last '.', and
// no name can reach into another layer's. "weight" is refused because
// "<layer>.weight" is the dense weight's name: a loader would take the layer
// for a dense one. ("bias" is fine: a packed layer has no dense bias beside
// it; its inference layer adds the bias it stores.)
std::string tensor_name_problem(const std::string& t) {
  if (t.empty()) return "an empty tensor name";
  if (t.size() > kMaxTensorName)
    return fmt::format("tensor name '{}...' is longer than {} characters", t.substr(0, 16),
                       kMaxTensorName);
  for (char c : t)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_'))
      return fmt::format("tensor name '{}' has a character other than letters, digits and '_'",
                         t);
  if (t == "weight")
    return "tensor name 'weight', which would be read as the layer's dense weight (store "
           "such a layer with --save-format compressed-tensors or dequantized)";
  return "";
}

// The metadata text of a result as a JSON object (UsageError otherwise).
ordered_json metadata_object(const std::string& layer, const std::string& format,
                             const std::string& text) {
  ordered_json m = ordered_json::parse(text, nullptr, false);
  if (!m.is_object())
    throw UsageError(fmt::format("--save-format qforge: layer {}: its {} metadata is not a JSON "
                                 "object", layer, format));
  return m;
}

class Native final : public SaveFormat {
 public:
  // `quant_method` names the layout in config.json; `only_format`, when not
  // empty, is the one packed format it accepts (a method's own name for
  // this layout, e.g. "quip").
  Native(std::string quant_method, std::string only_format)
      : method_(std::move(quant_method)), only_(std::move(only_format)) {}

  std::string name() const override { return method_; }

  void check_plan(const std::vector<std::string>& formats, const std::vector<std::string>&,
                  const ModelConfig&) const override {
    if (!only_.empty() && std::find(formats.begin(), formats.end(), only_) == formats.end())
      throw UsageError(fmt::format("--save-format {} needs layers packed in {}", method_, only_));
  }

  // Every tensor of the result, as it is; refused before the block's shard
  // is written when a name or dtype cannot be stored.
  NamedTensors packed_linear(const std::string& layer, const QuantResult& r) override {
    if (!only_.empty() && r.format != only_)
      throw UsageError(fmt::format("--save-format {}: layer {} came in {}, not {}", method_, layer,
                                   r.format, only_));
    metadata_object(layer, r.format, r.metadata);
    if (r.tensors.empty())
      throw UsageError(fmt::format("--save-format qforge: layer {}: its {} result has no packed "
                                   "tensor", layer, r.format));
    NamedTensors out;
    for (const auto& [t, tensor] : r.tensors) {
      if (const std::string why = tensor_name_problem(t); !why.empty())
        throw UsageError(fmt::format("--save-format qforge: layer {}: its {} result has {}",
                                     layer, r.format, why));
      try {
        to_st_dtype(tensor.scalar_type());
      } catch (const std::exception&) {
        throw UsageError(fmt::format("--save-format qforge: layer {}: tensor {} is {}, which a "
                                     "safetensors file cannot hold", layer, t,
                                     at::toString(tensor.scalar_type())));
      }
      out.emplace_back(layer + "." + t, tensor.contiguous());
    }
    return out;
  }

  // The tensor names come from the shards (`stored`, sorted), not from this
  // process's packed_linear calls: a resumed run wrote earlier blocks.
  ordered_json quantization_config(const std::vector<LayerReport>& layers, const ModelConfig&,
                                   const std::vector<std::string>& stored) const override {
    ordered_json entries = ordered_json::object();
    for (const auto& l : layers) {
      ordered_json tensors = ordered_json::array();
      const std::string prefix = l.name + ".";
      for (auto it = std::lower_bound(stored.begin(), stored.end(), prefix);
           it != stored.end() && it->compare(0, prefix.size(), prefix) == 0; ++it)
        tensors.push_back(it->substr(prefix.size()));
      if (tensors.empty() || std::find(tensors.begin(), tensors.end(), "weight") != tensors.end())
        throw UsageError(fmt::format("--save-format qforge: layer {} was not written packed",
                                     l.name));
      entries[l.name] = {{"format", l.format},
                         {"metadata", metadata_object(l.name, l.format, l.metadata)},
                         {"tensors", tensors}};
    }
    return {{"quant_method", method_}, {"format_version", kFormatVersion}, {"layers", entries}};
  }

 private:
  std::string method_, only_;
};

// ---- reading ----------------------------------------------------------------

struct StoredLayer {
  std::string format;
  std::string metadata;  // JSON object text, handed to the inference layer
  std::vector<std::string> tensors;
};

// The linear layers of the model in `model_dir`: a listed layer the model
// does not have is an error, not something to skip.
std::set<std::string> linear_layers(const std::string& model_dir) {
  const ModelConfig config = load_config(model_dir);
  std::set<std::string> names;
  for (int64_t i = 0; i < config.num_layers; ++i)
    for (const auto& n : config.arch.layout->linear_names(i)) names.insert(n);
  if (!config.tie_word_embeddings) names.insert("lm_head");
  return names;
}

// One entry of "layers" (untrusted JSON), checked field by field.
StoredLayer parse_layer(const std::string& layer, const json& e, const std::string& where) {
  const std::string at = fmt::format("{}: layers[\"{}\"]", where, layer);
  if (!e.is_object()) throw UsageError(at + " must be a JSON object");
  StoredLayer s;
  auto f = e.find("format");
  if (f == e.end() || !f->is_string() || f->get<std::string>().empty())
    throw UsageError(at + ": \"format\" must be a packed format id (a non-empty string)");
  s.format = f->get<std::string>();
  auto m = e.find("metadata");
  if (m == e.end() || !m->is_object())
    throw UsageError(at + ": \"metadata\" must be a JSON object");
  s.metadata = m->dump();
  auto t = e.find("tensors");
  if (t == e.end() || !t->is_array() || t->empty())
    throw UsageError(at + ": \"tensors\" must be a non-empty array of tensor names");
  for (const auto& name : *t) {
    if (!name.is_string()) throw UsageError(at + ": \"tensors\" must hold strings");
    s.tensors.push_back(name.get<std::string>());
    if (const std::string why = tensor_name_problem(s.tensors.back()); !why.empty())
      throw UsageError(fmt::format("{}: {}", at, why));
  }
  if (std::set<std::string>(s.tensors.begin(), s.tensors.end()).size() != s.tensors.size())
    throw UsageError(at + ": \"tensors\" lists a name twice");
  return s;
}

// Every layer of the quantization_config, checked before any weight is read.
std::map<std::string, StoredLayer> parse_layers(const Registry& registry,
                                                const std::string& model_dir, const json& q,
                                                const std::string& where) {
  const int64_t version = json_int(q, "format_version", where);
  if (version != kFormatVersion)
    throw UsageError(fmt::format("{}: format_version {} is not one this qforge reads ({})", where,
                                 version, kFormatVersion));
  auto layers = q.find("layers");
  if (layers == q.end() || !layers->is_object())
    throw UsageError(where + ": \"layers\" must be a JSON object (layer name -> packed layer)");
  const std::set<std::string> known = linear_layers(model_dir);
  std::map<std::string, StoredLayer> out;
  for (const auto& [name, e] : layers->items()) {
    if (!known.count(name))
      throw UsageError(fmt::format("{}: layer '{}' is not a linear layer of this model", where,
                                   name));
    StoredLayer s = parse_layer(name, e, where);
    if (registry.find_inference_layer(s.format) == nullptr)
      throw UsageError(fmt::format("{}: layer {} is stored in {}, and no loaded inference layer "
                                   "reads it (see `qforge plugins`; load its plugin with "
                                   "--plugin-dir)", model_dir, name, s.format));
    out.emplace(name, std::move(s));
  }
  return out;
}

LinearLoader native_loader(const Registry& registry, const std::string& model_dir, const json& q,
                           const std::string& where) {
  auto layers = std::make_shared<const std::map<std::string, StoredLayer>>(
      parse_layers(registry, model_dir, q, where));
  return [=, &registry](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    auto it = layers->find(l.name);
    if (it == layers->end()) return false;  // dense
    const StoredLayer& s = it->second;
    // A dense tensor beside the packed ones would be silently ignored.
    for (const char* dense : {"weight", "bias"})
      if (store.contains(l.name + "." + dense) &&
          std::find(s.tensors.begin(), s.tensors.end(), dense) == s.tensors.end())
        throw ModelFileError(fmt::format("{}: {} is stored packed ({}) and also has a dense {}.{}; "
                                         "which one is meant is unclear", model_dir, l.name,
                                         s.format, l.name, dense));
    QuantResult r;
    r.format = s.format;
    r.metadata = s.metadata;
    for (const auto& t : s.tensors) {
      const std::string name = l.name + "." + t;
      if (!store.contains(name))
        throw ModelFileError(fmt::format("{}: layer {} lists the packed tensor '{}', and the "
                                         "checkpoint has no {}", where, l.name, t, name));
      r.tensors[t] = store.view(name);
    }
    attach_packed(registry, model_dir, l, r, out, in);
    return true;
  };
}

}  // namespace

std::unique_ptr<SaveFormat> make_native_format() {
  return std::make_unique<Native>(kQuantMethod, "");
}

// --save-format quip: the same layout for org.qforge.quip/1 results under
// quant_method "quip"; each layer's metadata records its transforms (2^a,
// base order and kind, seed) beside the signs and any stored base.
std::unique_ptr<SaveFormat> make_quip_format() {
  return std::make_unique<Native>("quip", "org.qforge.quip/1");
}

const CheckpointReader kNativeReader = {kQuantMethod, "qforge", native_loader};
const CheckpointReader kQuipReader = {"quip", "quip", native_loader};

}  // namespace qforge::host
