// Quantized checkpoints on disk; see qforge_host/checkpoint.hpp.
//
// The GPTQ layout written and read here is AutoGPTQ's v1 ("gptq"
// checkpoint_format), as transformers' GPTQ integration, vLLM and GPTQModel
// load it: per quantized linear `qweight` int32 [in·bits/32, out], `qzeros`
// int32 [groups, out·bits/32] holding zero − 1, `scales` float16 [groups,
// out], `g_idx` int32 [in] and an optional float16 `bias`; the rest of the
// model float16; config.json["quantization_config"] = {quant_method "gptq",
// bits, group_size (-1: one group per output row), desc_act, sym,
// damp_percent, true_sequential, static_groups, checkpoint_format "gptq"}.
// The host only moves those tensors: their content is the contract of the
// packed format "org.qforge.gptq/1" between the plugin that writes it and the
// inference layer that reads it.
#include "qforge_host/checkpoint.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "qforge_host/errors.hpp"
#include "qforge_host/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

// Files copied from the source model next to the written weights.
const char* const kSideFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                  "special_tokens_map.json", "generation_config.json"};

// The packed tensors of a GPTQ linear and the dtype each must have.
const std::pair<const char*, at::ScalarType> kGptqTensors[] = {
    {"qweight", at::kInt}, {"qzeros", at::kInt}, {"scales", at::kHalf}, {"g_idx", at::kInt}};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("cannot open {}", path.string()));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Floating tensors are stored as float16; anything that does not fit is an
// error rather than an infinity in the output.
at::Tensor to_half(const std::string& name, const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type())) return t.contiguous();
  at::Tensor h = t.to(at::kHalf).contiguous();
  if (!at::isfinite(h).all().item<bool>() && at::isfinite(t).all().item<bool>())
    throw UsageError(fmt::format("{}: values beyond float16's range (max |x| = {}); a float16 "
                                 "checkpoint cannot hold it",
                                 name, t.abs().max().item<double>()));
  return h;
}

int64_t get_int(const json& m, const char* key, const std::string& where) {
  auto it = m.find(key);
  if (it == m.end() || !it->is_number_integer())
    throw UsageError(fmt::format("{}: \"{}\" must be an integer", where, key));
  return it->get<int64_t>();
}

bool get_bool(const json& m, const char* key, bool fallback, const std::string& where) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw UsageError(fmt::format("{}: \"{}\" must be true or false", where, key));
  return it->get<bool>();
}

// quantization_config for layers in "org.qforge.gptq/1": one setting for the
// whole model, as the format requires.
ordered_json gptq_quantization_config(
    const std::vector<std::pair<std::string, std::string>>& layers) {
  if (layers.empty()) throw UsageError("--save-format gptq: no layer was quantized");
  std::set<int64_t> bits, group_sizes;
  std::set<bool> sym, desc_act, static_groups;
  bool per_channel = true;
  double damp = -1;
  for (const auto& [format, metadata] : layers) {
    if (format != kGptqPackedFormat)
      throw UsageError(fmt::format("--save-format gptq needs every layer in {}, got a layer in {}",
                                   kGptqPackedFormat, format));
    json m = json::parse(metadata, nullptr, false);
    const std::string where = fmt::format("{} metadata", format);
    if (!m.is_object()) throw UsageError(where + " is not a JSON object");
    bits.insert(get_int(m, "bits", where));
    const int64_t g = get_int(m, "group_size", where);
    group_sizes.insert(g);
    per_channel = per_channel && g == get_int(m, "in_features", where);
    sym.insert(get_bool(m, "sym", true, where));
    desc_act.insert(get_bool(m, "desc_act", false, where));
    static_groups.insert(get_bool(m, "static_groups", false, where));
    if (auto d = m.find("damp_percent"); d != m.end() && d->is_number())
      damp = damp < 0 ? d->get<double>() : std::min(damp, d->get<double>());
  }
  auto one = [](const auto& set, const char* what) {
    if (set.size() != 1)
      throw UsageError(fmt::format("--save-format gptq: the layers differ in {} ({}); a GPTQ "
                                   "checkpoint holds one setting for the whole model (drop the "
                                   "--override, or use --save-format dequantized)",
                                   what, fmt::join(set, ", ")));
    return *set.begin();
  };
  const int64_t group_size = per_channel ? -1 : one(group_sizes, "group_size");
  ordered_json q;
  q["bits"] = one(bits, "bits");
  q["group_size"] = group_size;
  q["damp_percent"] = damp < 0 ? 0.01 : damp;
  q["desc_act"] = one(desc_act, "desc_act");
  q["static_groups"] = one(static_groups, "static_groups");
  q["sym"] = one(sym, "sym");
  q["true_sequential"] = true;  // the pipeline always quantizes sub-layers in order
  q["quant_method"] = "gptq";
  q["checkpoint_format"] = "gptq";
  return q;
}

}  // namespace

SaveFormat parse_save_format(const std::string& name) {
  if (name == "dequantized") return SaveFormat::dequantized;
  if (name == "gptq") return SaveFormat::gptq;
  throw UsageError(fmt::format("--save-format '{}': expected dequantized or gptq", name));
}

const char* save_format_name(SaveFormat f) {
  return f == SaveFormat::gptq ? "gptq" : "dequantized";
}

void write_text_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += fmt::format(".tmp-{}", getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw UsageError(fmt::format("cannot write {}", tmp.string()));
    }
  }
  fs::rename(tmp, path);
}

CheckpointWriter::CheckpointWriter(SaveFormat format, std::string model_dir, fs::path out_dir,
                                   const TensorStore& store, int64_t num_layers)
    : format_(format), model_dir_(std::move(model_dir)), out_(std::move(out_dir)),
      store_(store), num_layers_(num_layers) {}

std::string CheckpointWriter::shard_name(size_t i) {
  return fmt::format("model-block-{:05}.safetensors", i);
}

void CheckpointWriter::check_plan(const std::vector<std::string>& formats,
                                  const std::vector<std::string>& selected) const {
  if (format_ != SaveFormat::gptq) return;
  if (std::find(formats.begin(), formats.end(), kGptqPackedFormat) == formats.end())
    throw UsageError(fmt::format(
        "--save-format gptq needs layers packed in {}, but they come in {}; choose a method "
        "that writes {} (see `qforge plugins`) or --save-format dequantized",
        kGptqPackedFormat, formats.empty() ? std::string("no format") : fmt::format("{}", fmt::join(formats, ", ")),
        kGptqPackedFormat));
  const std::set<std::string> chosen(selected.begin(), selected.end());
  for (int64_t i = 0; i < num_layers_; ++i)
    for (const char* s : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      std::string name = fmt::format("model.layers.{}.{}", i, s);
      if (!chosen.count(name))
        throw UsageError(fmt::format("--save-format gptq needs every linear layer of every block "
                                     "quantized, and {} is not selected (serving engines load a "
                                     "GPTQ checkpoint with one setting for all of them)",
                                     name));
    }
}

void CheckpointWriter::write_block(size_t i, const Block& b,
                                   const std::map<std::string, const QuantResult*>& results) {
  const std::string p = fmt::format("model.layers.{}.", i);
  if (format_ == SaveFormat::gptq) {
    // Refuse mixed settings at the first block that brings one, not at the end.
    for (const Linear* l : b.linears())
      if (auto r = results.find(l->name); r != results.end())
        seen_.emplace_back(r->second->format, r->second->metadata);
    gptq_quantization_config(seen_);
  }
  std::vector<std::pair<std::string, at::Tensor>> w;
  auto add_float = [&](const std::string& name, const at::Tensor& t) {
    w.emplace_back(name, to_half(name, t));
  };
  add_float(p + "input_layernorm.weight", b.input_norm);
  add_float(p + "post_attention_layernorm.weight", b.post_attention_norm);
  if (b.q_norm.defined()) {
    add_float(p + "self_attn.q_norm.weight", b.q_norm);
    add_float(p + "self_attn.k_norm.weight", b.k_norm);
  }
  for (const Linear* l : b.linears()) {
    auto r = results.find(l->name);
    if (format_ == SaveFormat::gptq && r != results.end()) {
      const QuantResult& q = *r->second;
      if (q.format != kGptqPackedFormat)
        throw UsageError(fmt::format("--save-format gptq: layer {} came in {}, not {}", l->name,
                                     q.format, kGptqPackedFormat));
      for (const auto& [t, dtype] : kGptqTensors) {
        auto it = q.tensors.find(t);
        if (it == q.tensors.end() || it->second.scalar_type() != dtype)
          throw UsageError(fmt::format("layer {}: its {} result has no {} tensor {}", l->name,
                                       q.format, at::toString(dtype), t));
        w.emplace_back(l->name + "." + t, it->second.contiguous());
      }
      if (auto bias = q.tensors.find("bias"); bias != q.tensors.end())
        add_float(l->name + ".bias", bias->second);
      continue;
    }
    add_float(l->name + ".weight", l->weight);
    if (l->bias.defined()) add_float(l->name + ".bias", l->bias);
  }
  save_safetensors((out_ / shard_name(i)).string(), w);
}

void CheckpointWriter::finish(
    const std::vector<std::pair<std::string, std::string>>& layer_formats_metadata) const {
  // Everything that can be refused is checked before the first file is written.
  ordered_json config = ordered_json::parse(read_text(fs::path(model_dir_) / "config.json"),
                                            nullptr, false);
  if (!config.is_object()) throw UsageError(fmt::format("{}/config.json is not a JSON object", model_dir_));
  config.erase("quantization_config");
  config["torch_dtype"] = "float16";
  ordered_json quant;
  if (format_ == SaveFormat::gptq) {
    quant = gptq_quantization_config(layer_formats_metadata);
    config["quantization_config"] = quant;
  }
  for (const char* f : kSideFiles)
    if (fs::exists(fs::path(model_dir_) / f)) {
      fs::copy_file(fs::path(model_dir_) / f, out_ / f, fs::copy_options::overwrite_existing);
      fs::permissions(out_ / f, fs::perms::owner_read | fs::perms::owner_write,
                      fs::perm_options::add);  // sources may be read-only
    }
  write_text_atomic(out_ / "config.json", config.dump(2) + "\n");
  if (format_ == SaveFormat::gptq) write_text_atomic(out_ / "quantize_config.json", quant.dump(2) + "\n");

  std::vector<std::pair<std::string, at::Tensor>> rest;
  for (const auto& name : store_.names())
    if (name.rfind("model.layers.", 0) != 0) rest.emplace_back(name, to_half(name, store_.view(name)));
  save_safetensors((out_ / "model-rest.safetensors").string(), rest);
  json map = json::object();
  uint64_t total = 0;
  auto index_file = [&](const std::string& file) {
    SafetensorsFile shard((out_ / file).string());
    for (const auto& [name, info] : shard.tensors()) {
      map[name] = file;
      total += info.end - info.begin;
    }
  };
  index_file("model-rest.safetensors");
  for (int64_t i = 0; i < num_layers_; ++i) index_file(shard_name(i));
  json index = {{"metadata", {{"total_size", total}, {"producer", "qforge"}}}, {"weight_map", map}};
  write_text_atomic(out_ / "model.safetensors.index.json", index.dump(2) + "\n");
}

LinearLoader packed_linear_loader(const Registry& registry, const std::string& model_dir) {
  const fs::path path = fs::is_directory(model_dir) ? fs::path(model_dir) / "config.json"
                                                    : fs::path(model_dir);
  json config = json::parse(read_text(path), nullptr, false);
  if (!config.is_object() || !config.contains("quantization_config")) return {};
  const std::string where = path.string() + " quantization_config";
  const json& q = config["quantization_config"];
  if (!q.is_object()) throw UsageError(where + " must be a JSON object");
  const std::string method = q.value("quant_method", std::string());
  if (method != "gptq")
    throw UsageError(fmt::format("{}: quant_method '{}' is not one qforge reads (it reads "
                                 "\"gptq\" checkpoints)",
                                 where, method));
  const auto fmt_it = q.find("checkpoint_format");
  const std::string checkpoint_format =
      fmt_it == q.end() || fmt_it->is_null() ? "gptq" : fmt_it->is_string() ? fmt_it->get<std::string>() : "?";
  if (checkpoint_format != "gptq")
    throw UsageError(fmt::format("{}: checkpoint_format '{}' is not read by qforge (it reads "
                                 "AutoGPTQ v1, \"gptq\", whose qzeros store zero - 1)",
                                 where, checkpoint_format));
  const int64_t bits = get_int(q, "bits", where);
  const int64_t group_size = get_int(q, "group_size", where);
  if (bits < 2 || bits > 8) throw UsageError(fmt::format("{}: bits must be in [2, 8], got {}", where, bits));
  if (group_size == 0 || group_size < -1)
    throw UsageError(fmt::format("{}: group_size must be -1 or positive, got {}", where, group_size));
  const bool sym = get_bool(q, "sym", true, where);
  const bool desc_act = get_bool(q, "desc_act", false, where);
  const Component* layer = registry.find_inference_layer(kGptqPackedFormat);
  if (layer == nullptr)
    throw UsageError(fmt::format("{} is a GPTQ checkpoint, but no loaded inference layer reads "
                                 "{} (see `qforge plugins`)",
                                 model_dir, kGptqPackedFormat));
  return [=](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    if (!store.contains(l.name + ".qweight")) return false;
    QuantResult r;
    r.format = kGptqPackedFormat;
    r.metadata = json{{"bits", bits},
                      {"group_size", group_size == -1 ? in : group_size},
                      {"sym", sym},
                      {"desc_act", desc_act},
                      {"in_features", in},
                      {"out_features", out},
                      {"checkpoint_format", "gptq"}}
                     .dump();
    for (const auto& [t, dtype] : kGptqTensors) {
      const std::string name = l.name + "." + t;
      if (store.contains(name)) {
        r.tensors[t] = store.view(name);
      } else if (std::string(t) == "g_idx" && !desc_act) {
        // Old checkpoints without g_idx: columns in order, group = column / group_size.
        r.tensors[t] = at::div(at::arange(in, at::kInt), group_size == -1 ? in : group_size, "floor");
      } else {
        throw UsageError(fmt::format("{}: {} has a qweight but no {}", model_dir, l.name, name));
      }
    }
    // AutoGPTQ wrote a (zero) bias for every layer in some versions: take it when present.
    if (store.contains(l.name + ".bias")) r.tensors["bias"] = store.view(l.name + ".bias");
    try {
      l.packed = std::make_shared<PackedLayer>(*layer, r);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("{}: layer {}: {}", model_dir, l.name, e.what()));
    }
    if (l.packed->out_features() != out || l.packed->in_features() != in)
      throw UsageError(fmt::format("{}: layer {} is [{}, {}], the config implies [{}, {}]", model_dir,
                                   l.name, l.packed->out_features(), l.packed->in_features(), out, in));
    return true;
  };
}

Model load_model(const Registry& registry, const std::string& dir, at::ScalarType dtype,
                 bool with_blocks) {
  return Model::load(dir, dtype, with_blocks, packed_linear_loader(registry, dir));
}

}  // namespace qforge::host
