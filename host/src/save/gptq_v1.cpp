// --save-format gptq: the AutoGPTQ v1 checkpoint ("gptq" checkpoint_format)
// that transformers, vLLM and GPTQModel load. Each quantized linear stores
// the tensors of the packed format org.qforge.gptq/1 as they are (qweight,
// qzeros, scales, g_idx, optional bias); a result in another format of the
// kernels' affine table (e.g. RTN's) is decoded and re-packed into gptq/1
// (scales rounded to float16; a zero point of 0, which v1 cannot store, is
// refused with the layer named); config.json gets quant_method
// "gptq", bits, group_size (-1: one group per row), desc_act, sym,
// damp_percent, true_sequential, static_groups, checkpoint_format, and the
// same object is written as quantize_config.json. The format holds one
// setting for the whole model and needs every block linear quantized.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include <qforge/formats/gptq_v1.h>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/bitpack.hpp>

#include <map>

#include "formats.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/io/safetensors.hpp"

using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

constexpr const char* kPackedFormat = "org.qforge.gptq/1";

// The packed tensors of a GPTQ linear and the dtype each must have.
const std::pair<const char*, at::ScalarType> kTensors[] = {
    {"qweight", at::kInt}, {"qzeros", at::kInt}, {"scales", at::kHalf}, {"g_idx", at::kInt}};

// quantization_config for layers in org.qforge.gptq/1: one setting for the
// whole model, as the format requires.
ordered_json gptq_config(const std::vector<std::pair<std::string, std::string>>& layers) {
  if (layers.empty()) throw UsageError("--save-format gptq: no layer was quantized");
  std::set<int64_t> bits, group_sizes;
  std::set<bool> sym, desc_act, static_groups;
  bool per_channel = true;
  double damp = -1;
  for (const auto& [format, metadata] : layers) {
    if (format != kPackedFormat)
      throw UsageError(fmt::format("--save-format gptq needs every layer in {}, got a layer in {}",
                                   kPackedFormat, format));
    json m = json::parse(metadata, nullptr, false);
    const std::string where = fmt::format("{} metadata", format);
    if (!m.is_object()) throw UsageError(where + " is not a JSON object");
    bits.insert(json_int(m, "bits", where));
    const int64_t g = json_int(m, "group_size", where);
    group_sizes.insert(g);
    per_channel = per_channel && g == json_int(m, "in_features", where);
    sym.insert(json_bool(m, "sym", true, where));
    desc_act.insert(json_bool(m, "desc_act", false, where));
    static_groups.insert(json_bool(m, "static_groups", false, where));
    if (auto d = m.find("damp_percent"); d != m.end() && d->is_number())
      damp = damp < 0 ? d->get<double>() : std::min(damp, d->get<double>());
  }
  auto one = [](const auto& set, const char* what) {
    if (set.size() != 1)
      throw UsageError(fmt::format("--save-format gptq: the layers differ in {} ({}); a GPTQ "
                                   "checkpoint holds one setting for the whole model (drop the "
                                   "--override, or use --save-format compressed-tensors or "
                                   "dequantized)",
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

// A result of another affine format as gptq/1: its codes, scales and zero
// points written into gptq/1's layout by the format table (store_group_params).
QuantResult as_gptq_v1(const std::string& layer, const QuantResult& r) {
  const kernels::AffineFormat* row = kernels::find_affine_format(r.format.c_str());
  if (row == nullptr || row->transformed)
    throw UsageError(fmt::format("--save-format gptq: layer {} came in {}, which is neither {} nor "
                                 "a plain affine grid format", layer, r.format, kPackedFormat));
  const kernels::AffineTensors a = kernels::unpack_affine(r.format, r.metadata, r.tensors);
  const json meta = {{QFORGE_GPTQ_V1_BITS, a.bits},
                     {QFORGE_GPTQ_V1_GROUP_SIZE, a.group_size},
                     {QFORGE_GPTQ_V1_IN_FEATURES, a.in_features},
                     {QFORGE_GPTQ_V1_OUT_FEATURES, a.out_features},
                     {QFORGE_GPTQ_V1_SYM, affine_symmetric(r, a)},
                     {QFORGE_GPTQ_V1_DESC_ACT, !a.sequential_groups()},
                     {QFORGE_GPTQ_V1_STATIC_GROUPS, false},
                     {QFORGE_GPTQ_V1_CHECKPOINT_FORMAT, "gptq"},
                     {QFORGE_GPTQ_V1_ZERO_POINT_MIN, QFORGE_GPTQ_V1_ZERO_OFFSET}};
  const std::vector<std::pair<std::string, at::Tensor>> layout = {
      {QFORGE_GPTQ_V1_QWEIGHT,
       at::zeros({kernels::words_for(a.in_features, a.bits), a.out_features}, at::kInt)},
      {QFORGE_GPTQ_V1_QZEROS, at::zeros({a.groups, kernels::words_for(a.out_features, a.bits)}, at::kInt)},
      {QFORGE_GPTQ_V1_SCALES, at::zeros({a.groups, a.out_features}, at::kHalf)},
      {QFORGE_GPTQ_V1_G_IDX, a.g_idx.to(at::kInt).contiguous()}};
  at::Tensor scales = a.scales.clone(), zeros = a.zeros.clone();
  QuantResult v1;
  v1.format = kPackedFormat;
  v1.metadata = meta.dump();
  for (auto& [name, t] : kernels::store_group_params(*kernels::find_affine_format(kPackedFormat),
                                                     v1.metadata, layout, scales, zeros,
                                                     a.codes.to(at::kByte)))
    v1.tensors[name] = t;
  if (!at::equal(zeros, a.zeros)) {
    const int64_t g = a.zeros.ne(zeros).nonzero()[0][0].item<int64_t>();
    throw UsageError(fmt::format("--save-format gptq: layer {}, group {} has an asymmetric zero "
                                 "point of 0, which AutoGPTQ v1 cannot store (it stores zero - 1); "
                                 "use --save-format compressed-tensors, or a quantizer that keeps "
                                 "zero points >= 1 (org.qforge.gptq)", layer, g));
  }
  if (!at::isfinite(scales).all().item<bool>())
    throw UsageError(fmt::format("--save-format gptq: layer {} has a scale beyond float16", layer));
  if (auto bias = r.tensors.find("bias"); bias != r.tensors.end()) v1.tensors["bias"] = bias->second;
  return v1;
}

class GptqV1 final : public SaveFormat {
 public:
  std::string name() const override { return "gptq"; }

  void check_plan(const std::vector<std::string>& formats, const std::vector<std::string>& selected,
                  const ModelConfig& config) const override {
    const bool storable = std::any_of(formats.begin(), formats.end(), [](const std::string& f) {
      const kernels::AffineFormat* row = kernels::find_affine_format(f.c_str());
      return row != nullptr && !row->transformed;
    });
    if (!storable)
      throw UsageError(fmt::format(
          "--save-format gptq needs layers on an affine grid ({}, or one the host re-packs into "
          "it, e.g. org.qforge.rtn/1), but they come in {}; choose such a method (see `qforge "
          "plugins`) or --save-format dequantized",
          kPackedFormat,
          formats.empty() ? std::string("no format") : fmt::format("{}", fmt::join(formats, ", "))));
    const std::set<std::string> chosen(selected.begin(), selected.end());
    for (int64_t i = 0; i < config.num_layers; ++i)
      for (const auto& name : config.arch.layout->linear_names(i))
        if (!chosen.count(name))
          throw UsageError(fmt::format(
              "--save-format gptq needs every linear layer of every block quantized, and {} is "
              "not selected (serving engines load a GPTQ checkpoint with one setting for all of "
              "them)",
              name));
  }

  NamedTensors packed_linear(const std::string& layer, const QuantResult& result) override {
    const QuantResult q = result.format == kPackedFormat ? result : as_gptq_v1(layer, result);
    metadata_[layer] = q.metadata;
    // Refuse a differing setting at the first block that brings one, not at the end.
    seen_.emplace_back(q.format, q.metadata);
    gptq_config(seen_);
    NamedTensors out;
    for (const auto& [t, dtype] : kTensors) {
      auto it = q.tensors.find(t);
      if (it == q.tensors.end() || it->second.scalar_type() != dtype)
        throw UsageError(fmt::format("layer {}: its {} result has no {} tensor {}", layer,
                                     q.format, at::toString(dtype), t));
      out.emplace_back(layer + "." + t, it->second.contiguous());
    }
    if (auto bias = q.tensors.find("bias"); bias != q.tensors.end())
      out.emplace_back(layer + ".bias", to_half(layer + ".bias", bias->second));
    return out;
  }

  ordered_json quantization_config(const std::vector<LayerReport>& layers, const ModelConfig&,
                                   const std::vector<std::string>&) const override {
    std::vector<std::pair<std::string, std::string>> fm;
    for (const auto& l : layers) {
      auto it = metadata_.find(l.name);  // as written (re-packed from another format)
      if (it != metadata_.end())
        fm.emplace_back(kPackedFormat, it->second);
      else
        fm.emplace_back(l.format, l.metadata);
    }
    return gptq_config(fm);
  }

  std::vector<std::pair<std::string, std::string>> side_files(
      const ordered_json& config) const override {
    return {{"quantize_config.json", config.dump(2) + "\n"}};
  }

 private:
  std::vector<std::pair<std::string, std::string>> seen_;
  std::map<std::string, std::string> metadata_;  // gptq/1 metadata of each layer written
};

// AutoGPTQ reads quantize_config.json, transformers and vLLM config.json's
// quantization_config: when both exist they must agree, or loaders differ.
void check_quantize_config(const std::string& model_dir, const json& q, const std::string& where) {
  const std::string path = model_dir + "/quantize_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return;
  const json side = json::parse(read_file(path, "GPTQ config", 1u << 20), nullptr, false);
  if (!side.is_object()) throw ModelFileError(path + ": not a JSON object");
  for (const char* key : {"bits", "group_size", "sym", "desc_act"})
    if (side.contains(key) && q.contains(key) && side[key] != q[key])
      throw ModelFileError(fmt::format("{}: {} is {} but {} says {}; the two must agree", path,
                                       key, side[key].dump(), where, q[key].dump()));
}

LinearLoader gptq_v1_loader(const Registry& registry, const std::string& model_dir,
                            const json& q, const std::string& where) {
  const auto fmt_it = q.find("checkpoint_format");
  const std::string checkpoint_format =
      fmt_it == q.end() || fmt_it->is_null() ? "gptq"
      : fmt_it->is_string()                  ? fmt_it->get<std::string>()
                                             : "?";
  if (checkpoint_format != "gptq")
    throw UsageError(fmt::format("{}: checkpoint_format '{}' is not read by qforge (it reads "
                                 "AutoGPTQ v1, \"gptq\", whose qzeros store zero - 1)",
                                 where, checkpoint_format));
  const int64_t bits = json_int(q, "bits", where);
  const int64_t group_size = json_int(q, "group_size", where);
  if (bits < 2 || bits > 8)
    throw UsageError(fmt::format("{}: bits must be in [2, 8], got {}", where, bits));
  if (group_size == 0 || group_size < -1)
    throw UsageError(
        fmt::format("{}: group_size must be -1 or positive, got {}", where, group_size));
  const bool sym = json_bool(q, "sym", true, where);
  const bool desc_act = json_bool(q, "desc_act", false, where);
  check_quantize_config(model_dir, q, where);
  if (registry.find_inference_layer(kPackedFormat) == nullptr)
    throw UsageError(fmt::format("{} is a GPTQ checkpoint, but no loaded inference layer reads "
                                 "{} (see `qforge plugins`)",
                                 model_dir, kPackedFormat));
  return [=, &registry](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    if (!store.contains(l.name + ".qweight")) return false;
    if (store.contains(l.name + ".weight"))
      throw ModelFileError(fmt::format("{}: {} has both a dense .weight and a .qweight; which one "
                                       "is meant is unclear", model_dir, l.name));
    QuantResult r;
    r.format = kPackedFormat;
    r.metadata = json{{"bits", bits},
                      {"group_size", group_size == -1 ? in : group_size},
                      {"sym", sym},
                      {"desc_act", desc_act},
                      {"in_features", in},
                      {"out_features", out},
                      {"checkpoint_format", "gptq"}}
                     .dump();
    for (const auto& [t, dtype] : kTensors) {
      const std::string name = l.name + "." + t;
      if (store.contains(name)) {
        r.tensors[t] = store.view(name);
      } else if (std::string(t) == "g_idx" && !desc_act) {
        // Old checkpoints without g_idx: columns in order, group = column / group_size.
        r.tensors[t] =
            at::div(at::arange(in, at::kInt), group_size == -1 ? in : group_size, "floor");
      } else {
        throw UsageError(fmt::format("{}: {} has a qweight but no {}", model_dir, l.name, name));
      }
    }
    // AutoGPTQ wrote a (zero) bias for every layer in some versions: take it when present.
    if (store.contains(l.name + ".bias")) r.tensors["bias"] = store.view(l.name + ".bias");
    attach_packed(registry, model_dir, l, r, out, in);
    return true;
  };
}

}  // namespace

std::unique_ptr<SaveFormat> make_gptq_v1_format() { return std::make_unique<GptqV1>(); }

const CheckpointReader kGptqV1Reader = {"gptq", "gptq", gptq_v1_loader};

}  // namespace qforge::host
