// --save-format compressed-tensors: the pack-quantized layout llm-compressor
// writes and vLLM / transformers load (sdk/include/qforge/formats/
// ct_pack_quantized_v1.h; the codec is compressed_tensors_codec.*). Any
// affine grid result (a format of the kernels' affine table: RTN, GPTQ, ...)
// is decoded to codes, scales, zero points and groups and re-packed; layers
// with different settings become separate config groups, so per-layer
// overrides are written, not refused. Read back as the packed format
// org.qforge.ct-pack-quantized/1, which the table-driven affine layer runs.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <qforge/formats/ct_pack_quantized_v1.h>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/affine_format.hpp>

#include <map>
#include <set>

#include "compressed_tensors_codec.hpp"
#include "formats.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/io/safetensors.hpp"

using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

constexpr const char* kPackedFormat = QFORGE_FORMAT_CT_PACK_QUANTIZED_V1;

ct::AffineLinear affine_linear(const std::string& layer, const QuantResult& r) {
  kernels::AffineTensors a;
  try {
    a = kernels::unpack_affine(r.format, r.metadata, r.tensors);
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("--save-format compressed-tensors: layer {}: {}", layer, e.what()));
  }
  ct::AffineLinear l;
  l.bits = a.bits;
  l.out_features = a.out_features;
  l.in_features = a.in_features;
  l.codes = a.codes;
  l.scales = a.scales;
  l.zeros = a.zeros;
  l.g_idx = a.g_idx;
  l.group_size = a.group_size >= a.in_features ? -1 : a.group_size;
  // The producer's "sym" claim when its metadata makes one, else the data's.
  json m = json::parse(r.metadata, nullptr, false);
  if (m.is_object() && m.contains("sym") && m["sym"].is_boolean())
    l.symmetric = m["sym"].get<bool>();
  else
    l.symmetric = a.zeros.eq(static_cast<double>(1 << (a.bits - 1))).all().item<bool>();
  l.act_order = !a.sequential_groups();
  return l;
}

class CompressedTensors final : public SaveFormat {
 public:
  std::string name() const override { return "compressed-tensors"; }

  void check_plan(const std::vector<std::string>& formats, const std::vector<std::string>& selected,
                  const ModelConfig& config) const override {
    bool affine = false;
    for (const auto& f : formats) {
      const kernels::AffineFormat* row = kernels::find_affine_format(f.c_str());
      affine = affine || (row != nullptr && !row->transformed);
    }
    if (!affine)
      throw UsageError(fmt::format(
          "--save-format compressed-tensors stores affine grid results (W = s·(q − z)), and the "
          "method's formats ({}) are not among them; use --save-format dequantized",
          formats.empty() ? std::string("none") : fmt::format("{}", fmt::join(formats, ", "))));
    // Shards vLLM fuses (q/k/v, gate/up) must be all quantized or all left out:
    // checked now with one placeholder scheme for every selected layer.
    std::vector<std::pair<std::string, ct::Scheme>> layers;
    for (const auto& name : selected) layers.emplace_back(name, ct::Scheme{});
    if (layers.empty()) return;
    try {
      ct::quantization_config(layers, ignored(layers, config));
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: {}", e.what()));
    }
  }

  NamedTensors packed_linear(const std::string& layer, const QuantResult& r) override {
    ct::AffineLinear l = affine_linear(layer, r);
    ct::Scheme scheme;
    try {
      scheme = ct::scheme_of(l);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: layer {}: {}", layer, e.what()));
    }
    schemes_[layer] = scheme;
    order_.emplace_back(layer, scheme);
    // Fused shards with different settings are refused at the block that
    // brings them, before its shard is written.
    try {
      ct::quantization_config(order_, {});
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: {}", e.what()));
    }
    NamedTensors out = ct::pack(layer, l, at::kHalf);
    if (auto bias = r.tensors.find("bias"); bias != r.tensors.end())
      out.emplace_back(layer + ".bias", to_half(layer + ".bias", bias->second));
    return out;
  }

  ordered_json quantization_config(const std::vector<LayerReport>& layers,
                                   const ModelConfig& config,
                                   const std::vector<std::string>&) const override {
    std::vector<std::pair<std::string, ct::Scheme>> quantized;
    for (const auto& l : layers) {
      auto it = schemes_.find(l.name);
      if (it == schemes_.end())
        throw UsageError(fmt::format("--save-format compressed-tensors: layer {} was not written "
                                     "packed", l.name));
      quantized.emplace_back(l.name, it->second);
    }
    return ct::quantization_config(quantized, ignored(quantized, config));
  }

 private:
  // Every block linear not in `layers`, and lm_head.
  static std::vector<std::string> ignored(
      const std::vector<std::pair<std::string, ct::Scheme>>& layers, const ModelConfig& config) {
    std::set<std::string> names;
    for (const auto& l : layers) names.insert(l.first);
    std::vector<std::string> ignore;
    for (int64_t i = 0; i < config.num_layers; ++i)
      for (const auto& n : config.arch.layout->linear_names(i))
        if (!names.count(n)) ignore.push_back(n);
    ignore.push_back("lm_head");
    return ignore;
  }

  std::map<std::string, ct::Scheme> schemes_;
  std::vector<std::pair<std::string, ct::Scheme>> order_;  // as written
};

std::string actorder_name(ct::ActOrder a) {
  return a == ct::ActOrder::group ? "group" : a == ct::ActOrder::weight ? "static" : "";
}

LinearLoader ct_loader(const Registry& registry, const std::string& model_dir, const json& q,
                       const std::string& where) {
  if (registry.find_inference_layer(kPackedFormat) == nullptr)
    throw UsageError(fmt::format("{} is a compressed-tensors checkpoint, but no loaded inference "
                                 "layer reads {} (see `qforge plugins`)",
                                 model_dir, kPackedFormat));
  // Every group's scheme is checked now, before any layer is read.
  try {
    ct::parse_scheme(q, "");
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: {}", where, e.what()));
  }
  return [=, &registry](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    if (!store.contains(l.name + "." QFORGE_CT_WEIGHT_PACKED)) return false;
    std::optional<ct::Scheme> scheme;
    try {
      scheme = ct::parse_scheme(q, l.name);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("{}: {}", where, e.what()));
    }
    if (!scheme)
      throw UsageError(fmt::format("{}: {} is packed, but no config group targets it", where,
                                   l.name));
    QuantResult r;
    r.format = kPackedFormat;
    json meta = {{QFORGE_CT_META_NUM_BITS, scheme->num_bits},
                 {QFORGE_CT_META_SYMMETRIC, scheme->symmetric},
                 {QFORGE_CT_META_STRATEGY,
                  scheme->strategy == ct::Strategy::channel ? "channel" : "group"},
                 {QFORGE_CT_META_GROUP_SIZE, scheme->group_size},
                 {QFORGE_CT_META_IN_FEATURES, in},
                 {QFORGE_CT_META_OUT_FEATURES, out}};
    const std::string act = actorder_name(scheme->actorder);
    meta[QFORGE_CT_META_ACTORDER] = act.empty() ? json(nullptr) : json(act);
    r.metadata = meta.dump();
    for (const char* t : {QFORGE_CT_WEIGHT_PACKED, QFORGE_CT_WEIGHT_SCALE, QFORGE_CT_WEIGHT_SHAPE,
                          QFORGE_CT_WEIGHT_ZERO_POINT, QFORGE_CT_WEIGHT_G_IDX, "bias"}) {
      const std::string name = l.name + "." + t;
      if (store.contains(name)) r.tensors[t] = store.view(name);
    }
    if (!scheme->symmetric && !r.tensors.count(QFORGE_CT_WEIGHT_ZERO_POINT))
      throw UsageError(fmt::format("{}: {} is asymmetric but has no {}", model_dir, l.name,
                                   QFORGE_CT_WEIGHT_ZERO_POINT));
    if (scheme->symmetric && r.tensors.count(QFORGE_CT_WEIGHT_ZERO_POINT))
      throw UsageError(fmt::format("{}: {} is symmetric but has a {}", model_dir, l.name,
                                   QFORGE_CT_WEIGHT_ZERO_POINT));
    attach_packed(registry, model_dir, l, r, out, in);
    return true;
  };
}

}  // namespace

std::unique_ptr<SaveFormat> make_compressed_tensors_format() {
  return std::make_unique<CompressedTensors>();
}

const CheckpointReader kCompressedTensorsReader = {"compressed-tensors", "compressed-tensors", ct_loader};

}  // namespace qforge::host
