// Quantized model directories; see qforge_host/save/checkpoint.hpp. What a
// format stores for a quantized linear is its own file's business
// (dequantized.cpp, gptq_v1.cpp, ...); this file writes the shards, the side
// files, config.json and the index, and picks the reader on load.
#include "qforge_host/save/checkpoint.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fmt/ranges.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/save/save_format.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

// Files copied from the source model next to the written weights.
const char* const kSideFiles[] = {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                                  "special_tokens_map.json", "generation_config.json"};

// Files in `dir` that a model loader could take for weights or their index
// and that this run does not write (with `resume`, a checkpointed run's own
// shards are its own).
std::vector<std::string> foreign_model_files(const fs::path& dir, bool resume) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    const bool weights = ext == ".safetensors" || ext == ".bin" || ext == ".pt" ||
                         ext == ".pth" || ext == ".gguf" ||
                         (name.size() > 11 && name.compare(name.size() - 11, 11, ".index.json") == 0);
    if (!weights) continue;
    const bool ours = name.rfind("model-block-", 0) == 0 || name == "model-rest.safetensors" ||
                      name == "quant_results.safetensors";
    if (resume && ours) continue;
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

fs::path config_path(const std::string& model_dir) {
  return fs::is_directory(model_dir) ? fs::path(model_dir) / "config.json" : fs::path(model_dir);
}

}  // namespace

at::Tensor to_half(const std::string& name, const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type())) return t.contiguous();
  at::Tensor h = t.to(at::kHalf).contiguous();
  if (!all_finite(h) && all_finite(t))
    throw UsageError(fmt::format("{}: values beyond float16's range (max |x| = {}); a float16 "
                                 "checkpoint cannot hold it",
                                 name, t.abs().max().item<double>()));
  return h;
}

CheckpointWriter::CheckpointWriter(std::unique_ptr<SaveFormat> format, std::string model_dir,
                                   fs::path out_dir, const WriterOptions& options)
    : format_(std::move(format)), model_dir_(std::move(model_dir)), out_(std::move(out_dir)),
      lock_(out_.string(), options.holder), store_(model_dir_), config_(load_config(model_dir_)) {
  if (fs::exists(out_ / "model.safetensors.index.json"))
    throw UsageError(fmt::format("{} already holds a model; choose another --out or delete it",
                                 out_.string()));
  // Temporaries of an earlier run killed mid-write ("<file>.tmp-<pid>"): with
  // the lock held, nobody else writes here.
  for (const fs::path& dir : {out_, out_ / ".qforge-checkpoint"}) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.path().filename().string().find(".tmp-") != std::string::npos) fs::remove(e.path(), ec);
  }
  // An unfinished run's shards are not stale: the pipeline says to --resume it.
  if (!options.resume && fs::exists(out_ / ".qforge-checkpoint" / "state.json")) return;
  const std::vector<std::string> stale = foreign_model_files(out_, options.resume);
  if (stale.empty()) return;
  if (!options.force)
    throw UsageError(fmt::format(
        "{} holds model files this run would not write ({}{}); a loader could read them instead "
        "of the output: remove them, choose another --out, or pass --force to delete them",
        out_.string(), fmt::join(stale.begin(), stale.begin() + std::min<size_t>(stale.size(), 3), ", "),
        stale.size() > 3 ? fmt::format(" and {} more", stale.size() - 3) : ""));
  for (const auto& name : stale) {
    std::error_code ec;
    fs::remove(out_ / name, ec);
    if (ec) throw IoError(fmt::format("{}: cannot delete it: {}", (out_ / name).string(), ec.message()));
    log(LogLevel::warn, "--force: deleted {}", (out_ / name).string());
  }
}

std::string CheckpointWriter::shard_name(size_t i) {
  return fmt::format("model-block-{:05}.safetensors", i);
}

void CheckpointWriter::check_plan(const std::vector<std::string>& formats,
                                  const std::vector<std::string>& selected) const {
  format_->check_plan(formats, selected, config_);
}

void CheckpointWriter::restore_block(size_t,
                                     const std::map<std::string, const QuantResult*>& results) {
  // The format sees each packed result again, as when the block was written
  // (its tensors are already in the block's shard and are not kept).
  for (const auto& [layer, result] : results) (void)format_->packed_linear(layer, *result);
}

std::vector<std::string> CheckpointWriter::write_block(
    size_t i, const Block& b, const std::map<std::string, const QuantResult*>& results) {
  const std::string p = config_.arch.layout->prefix(static_cast<int64_t>(i));
  NamedTensors w;
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
    if (auto r = results.find(l->name); r != results.end()) {
      NamedTensors packed = format_->packed_linear(l->name, *r->second);
      if (!packed.empty()) {
        // As the format gave them: an inference layer reads them bit for bit.
        for (auto& [name, t] : packed) w.emplace_back(name, t.contiguous());
        continue;
      }
    }
    add_float(l->name + ".weight", l->weight);
    if (l->bias.defined()) add_float(l->name + ".bias", l->bias);
  }
  fs::create_directories(out_);
  const std::string shard = (out_ / shard_name(i)).string();
  save_safetensors(shard, w);
  return {shard};
}

std::vector<std::string> CheckpointWriter::block_tensor_names() const {
  std::vector<std::string> names;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const SafetensorsFile shard((out_ / shard_name(i)).string());
    for (const auto& [name, info] : shard.tensors()) names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names;
}

void CheckpointWriter::finish(const std::vector<LayerReport>& layers) {
  // Everything that can be refused is checked before the first file is written.
  ordered_json config = ordered_json::parse(
      read_file((fs::path(model_dir_) / "config.json").string(), "model config"), nullptr, false);
  if (!config.is_object())
    throw UsageError(fmt::format("{}/config.json is not a JSON object", model_dir_));
  config.erase("quantization_config");
  config["torch_dtype"] = "float16";
  ordered_json quant = format_->quantization_config(layers, config_, block_tensor_names());
  if (!quant.is_null()) config["quantization_config"] = quant;
  // Written like every other file (a temporary name, then a rename): a
  // symlink planted in --out is replaced, never followed.
  for (const char* f : kSideFiles)
    if (fs::exists(fs::path(model_dir_) / f))
      write_text_atomic((out_ / f).string(), read_file((fs::path(model_dir_) / f).string(), f));
  write_text_atomic((out_ / "config.json").string(), config.dump(2) + "\n");
  for (const auto& [name, text] : format_->side_files(quant))
    write_text_atomic((out_ / name).string(), text);

  NamedTensors rest;
  for (const auto& name : store_.names())
    if (!config_.arch.layout->block_of(name))
      rest.emplace_back(name, to_half(name, store_.view(name)));
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
  for (int64_t i = 0; i < config_.num_layers; ++i) index_file(shard_name(i));
  json index = {{"metadata", {{"total_size", total}, {"producer", "qforge"}}}, {"weight_map", map}};
  write_text_atomic((out_ / "model.safetensors.index.json").string(), index.dump(2) + "\n");
}

bool declares_quantization(const std::string& model_dir) {
  json config = json::parse(read_file(config_path(model_dir).string(), "model config"), nullptr,
                            false);
  return config.is_object() && config.contains("quantization_config");
}

LinearLoader packed_linear_loader(const Registry& registry, const std::string& model_dir) {
  const fs::path path = config_path(model_dir);
  json config = json::parse(read_file(path.string(), "model config"), nullptr, false);
  if (!config.is_object() || !config.contains("quantization_config")) return {};
  const std::string where = path.string() + " quantization_config";
  const json& q = config["quantization_config"];
  if (!q.is_object()) throw UsageError(where + " must be a JSON object");
  const std::string method = q.value("quant_method", std::string());
  std::string known;
  for (const auto& r : checkpoint_readers()) {
    if (method == r.quant_method) return r.loader(registry, model_dir, q, where);
    known += (known.empty() ? "\"" : ", \"") + std::string(r.quant_method) + "\"";
  }
  throw UsageError(fmt::format("{}: quant_method '{}' is not one qforge reads (it reads {})",
                               where, method, known));
}

void store_tuned_layers(const std::string& dir, const std::map<std::string, QuantResult>& results) {
  if (results.empty()) return;
  const fs::path path = config_path(dir);
  const json config = json::parse(read_file(path.string(), "model config"), nullptr, false);
  const std::string method = config.is_object() && config.contains("quantization_config") &&
                                     config["quantization_config"].is_object()
                                 ? config["quantization_config"].value("quant_method", std::string())
                                 : std::string();
  const CheckpointReader* reader = nullptr;
  for (const auto& r : checkpoint_readers())
    if (method == r.quant_method) reader = &r;
  if (reader == nullptr)
    throw UsageError(fmt::format("{}: no quantization_config qforge writes: tuned layers cannot be "
                                 "stored", path.string()));
  const std::unique_ptr<SaveFormat> format = make_save_format(reader->save_format);

  // Which shard holds each tensor.
  std::map<std::string, std::string> shard_of;
  const fs::path index = fs::path(dir) / "model.safetensors.index.json";
  if (fs::exists(index)) {
    const json j = json::parse(read_file(index.string(), "weight index"), nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw ModelFileError(index.string() + ": no weight_map object");
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw ModelFileError(index.string() + ": weight_map." + name + " is not a string");
      const std::string f = file.get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f[0] == '.')
        throw ModelFileError(index.string() + ": weight_map." + name + " names no file of the directory");
      shard_of[name] = f;
    }
  } else {
    SafetensorsFile single((fs::path(dir) / "model.safetensors").string());
    for (const auto& [name, info] : single.tensors()) shard_of[name] = "model.safetensors";
  }

  // Every replacement checked against what is there, before anything is written.
  std::map<std::string, std::map<std::string, at::Tensor>> by_shard;
  std::map<std::string, std::unique_ptr<SafetensorsFile>> shards;
  for (const auto& [layer, result] : results) {
    for (auto& [name, tensor] : format->packed_linear(layer, result)) {
      auto it = shard_of.find(name);
      if (it == shard_of.end())
        throw UsageError(fmt::format("{}: the tuned {} stores a tensor '{}' the checkpoint does not "
                                     "have", dir, layer, name));
      auto& file = shards[it->second];
      if (!file) file = std::make_unique<SafetensorsFile>((fs::path(dir) / it->second).string());
      const at::Tensor old = file->view(name);
      if (old.scalar_type() != tensor.scalar_type() || old.sizes() != tensor.sizes())
        throw UsageError(fmt::format("{}: the tuned tensor '{}' is {} {}, the checkpoint's {} {}", dir,
                                     name, c10::toString(tensor.scalar_type()), tensor.sizes(),
                                     c10::toString(old.scalar_type()), old.sizes()));
      by_shard[it->second][name] = tensor.contiguous();
    }
  }
  for (const auto& [shard, replaced] : by_shard) {
    const SafetensorsFile& file = *shards.at(shard);
    // In the order of the data: the same header, byte for byte.
    std::vector<const TensorInfo*> order;
    for (const auto& [name, info] : file.tensors()) order.push_back(&info);
    std::sort(order.begin(), order.end(),
              [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const TensorInfo* info : order) {
      auto it = replaced.find(info->name);
      tensors.emplace_back(info->name, it != replaced.end() ? it->second : file.view(info->name));
    }
    save_safetensors((fs::path(dir) / shard).string(), tensors, file.metadata());
    log(LogLevel::info, "{}: {} tuned tensors written", (fs::path(dir) / shard).string(), replaced.size());
  }
}

Model load_model(const Registry& registry, const std::string& dir, at::ScalarType dtype,
                 bool with_blocks) {
  return Model::load(dir, dtype, with_blocks, packed_linear_loader(registry, dir));
}

}  // namespace qforge::host
