// --save-format compressed-tensors: the layouts llm-compressor writes and
// vLLM / transformers load (the codec is compressed_tensors_codec.*):
//   * pack-quantized (sdk/include/qforge/formats/ct_pack_quantized_v1.h): any
//     affine grid result (a format of the kernels' affine table: RTN, GPTQ,
//     ...) is decoded to codes, scales, zero points and groups and re-packed;
//     read back as org.qforge.ct-pack-quantized/1, which the table-driven
//     affine layer runs;
//   * int-/float-/naive-quantized (ct_naive_quantized_v1.h): results of
//     org.qforge.ct-naive-quantized/1 (W8A8, FP8) are stored as they are, with
//     float16 scales (int weights without input activations become
//     pack-quantized, as compressed-tensors writes them); read back in that
//     format, which org.qforge.w8a8.layer runs.
//   * dense: results of org.qforge.pruned/1 (pruned float weights,
//     sdk/include/qforge/formats/pruned_v1.h) are stored as dense float16
//     weights, like the linears left out, in no config group (in "ignore");
//     read back as dense linears.
// Layers with different settings become separate config groups, so per-layer
// overrides are written, not refused. Pruned layers (org.qforge.pruned/1, and
// any result whose metadata carries "sparsity_structure", e.g. 2:4 with
// 4-bit or FP8 weights) are the targets of sparsity_config, format "dense"
// (the legacy SparsityCompressionConfig, research/llm-compressor.md §2.7):
// their zeros are checked against the structure they claim.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>
#include <qforge/formats/pruned_v1.h>
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
constexpr const char* kNaiveFormat = QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1;
constexpr const char* kPrunedFormat = QFORGE_FORMAT_PRUNED_V1;

ct::AffineLinear affine_linear(const QuantResult& r) {
  const kernels::AffineTensors a = kernels::unpack_affine(r.format, r.metadata, r.tensors);
  ct::AffineLinear l;
  l.bits = a.bits;
  l.out_features = a.out_features;
  l.in_features = a.in_features;
  l.codes = a.codes;
  l.scales = a.scales;
  l.zeros = a.zeros;
  l.g_idx = a.g_idx;
  l.group_size = a.group_size >= a.in_features ? -1 : a.group_size;
  l.symmetric = affine_symmetric(r, a);
  l.act_order = !a.sequential_groups();
  return l;
}

// The "sparsity_structure" a result's metadata claims, or "" (not pruned).
std::string claimed_structure(const QuantResult& r) {
  const json m = json::parse(r.metadata, nullptr, false);
  if (!m.is_object() || !m.contains(QFORGE_META_SPARSITY_STRUCTURE)) return "";
  if (!m[QFORGE_META_SPARSITY_STRUCTURE].is_string())
    throw UsageError(QFORGE_META_SPARSITY_STRUCTURE " must be a string");
  return m[QFORGE_META_SPARSITY_STRUCTURE].get<std::string>();
}

// Where the decoded weight of `r` is exactly 0 (bool [out, in]), from its
// packed tensors (a resumed run has no dequantized weight).
at::Tensor zero_mask(const QuantResult& r) {
  if (r.format == kPrunedFormat) return r.tensors.at(QFORGE_PRUNED_V1_WEIGHT).eq(0);
  if (r.format == kNaiveFormat) {
    const ct::NaiveLinear l = ct::naive_linear(r.metadata, r.tensors);
    return l.scheme.type == ct::Type::floating ? l.weight.bitwise_and(0x7F).eq(0) : l.weight.eq(0);
  }
  const ct::AffineLinear a = affine_linear(r);  // W = s·(q − z): 0 where q = z (s > 0)
  const at::Tensor z = a.zeros.t().index_select(1, a.g_idx.to(at::kLong));  // [out, in]
  return a.codes.to(at::kFloat).eq(z);
}

class CompressedTensors final : public SaveFormat {
 public:
  std::string name() const override { return "compressed-tensors"; }

  void check_plan(const std::vector<std::string>& formats, const std::vector<std::string>& selected,
                  const ModelConfig& config) const override {
    bool storable = false;
    for (const auto& f : formats) {
      const kernels::AffineFormat* row = kernels::find_affine_format(f.c_str());
      storable = storable || (row != nullptr && !row->transformed) || f == kNaiveFormat ||
                 f == kPrunedFormat;
    }
    if (!storable)
      throw UsageError(fmt::format(
          "--save-format compressed-tensors stores affine grid results (W = s·(q − z)), {} "
          "(W8A8, FP8) and {} (pruned weights, dense), and the method's formats ({}) are not "
          "among them; use --save-format dequantized", kNaiveFormat, kPrunedFormat,
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
    note_sparsity(layer, r);
    if (r.format == kPrunedFormat) {
      dense_pruned_.push_back(layer);
      check_fused_schemes();
      return dense(layer, r);
    }
    ct::Scheme scheme;
    NamedTensors out;
    try {
      std::optional<ct::AffineLinear> affine;
      if (r.format == kNaiveFormat) {
        const ct::NaiveLinear l = ct::naive_linear(r.metadata, r.tensors);
        if (l.scheme.type == ct::Type::integer && !l.scheme.input) {
          affine = ct::to_affine(l);  // W8A16: pack-quantized, as compressed-tensors writes it
        } else {
          scheme = l.scheme;
          out = ct::pack(layer, l);
        }
      } else {
        affine = affine_linear(r);
      }
      if (affine) {
        scheme = ct::scheme_of(*affine);
        out = ct::pack(layer, *affine, at::kHalf);
      }
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: layer {}: {}", layer, e.what()));
    }
    schemes_[layer] = scheme;
    order_.emplace_back(layer, scheme);
    check_fused_schemes();
    if (auto bias = r.tensors.find("bias"); bias != r.tensors.end())
      out.emplace_back(layer + ".bias", to_half(layer + ".bias", bias->second));
    return out;
  }

  ordered_json quantization_config(const std::vector<LayerReport>& layers,
                                   const ModelConfig& config,
                                   const std::vector<std::string>&) const override {
    std::vector<std::pair<std::string, ct::Scheme>> quantized;
    std::vector<std::pair<std::string, ct::Sparsity>> pruned;
    for (const auto& l : layers) {
      for (const auto& p : pruned_seen_)
        if (p.first == l.name) pruned.push_back(p);
      if (l.format == kPrunedFormat) continue;  // dense, ignored by the config groups
      auto it = schemes_.find(l.name);
      if (it == schemes_.end())
        throw UsageError(fmt::format("--save-format compressed-tensors: layer {} was not written "
                                     "packed", l.name));
      quantized.emplace_back(l.name, it->second);
    }
    try {
      return ct::quantization_config(quantized, ignored(quantized, config),
                                     ct::sparsity_config(pruned, ignored(pruned, config)));
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: {}", e.what()));
    }
  }

 private:
  // A pruned float layer: its weight (and bias) as dense float16 tensors, as
  // the linears left out are written.
  static NamedTensors dense(const std::string& layer, const QuantResult& r) {
    const auto w = r.tensors.find(QFORGE_PRUNED_V1_WEIGHT);
    if (w == r.tensors.end() || w->second.dim() != 2)
      throw UsageError(fmt::format("--save-format compressed-tensors: layer {}: its {} result has "
                                   "no 2-D weight", layer, r.format));
    NamedTensors out{{layer + ".weight", to_half(layer + ".weight", w->second)}};
    if (auto bias = r.tensors.find(QFORGE_PRUNED_V1_BIAS); bias != r.tensors.end())
      out.emplace_back(layer + ".bias", to_half(layer + ".bias", bias->second));
    return out;
  }

  // Fused shards with different settings, or quantized beside a pruned
  // float one (stored dense), are refused at the block that brings them,
  // before its shard is written.
  void check_fused_schemes() const {
    if (order_.empty()) return;
    try {
      ct::quantization_config(order_, dense_pruned_);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: {}", e.what()));
    }
  }

  // Records the sparsity of a pruned layer (checked against its claim) and
  // refuses fused shards that are not pruned alike, at the block that brings
  // them.
  void note_sparsity(const std::string& layer, const QuantResult& r) {
    try {
      std::string structure = claimed_structure(r);
      if (r.format == kPrunedFormat && structure.empty())
        throw UsageError(fmt::format("{} metadata has no {}", r.format, QFORGE_META_SPARSITY_STRUCTURE));
      if (structure.empty()) {
        dense_seen_.push_back(layer);
      } else {
        pruned_seen_.emplace_back(layer, ct::sparsity_of(zero_mask(r), structure));
      }
      ct::sparsity_config(pruned_seen_, dense_seen_);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("--save-format compressed-tensors: layer {}: {}", layer, e.what()));
    }
  }

  // Every block linear not in `layers`, and lm_head.
  template <class T>
  static std::vector<std::string> ignored(const std::vector<std::pair<std::string, T>>& layers,
                                          const ModelConfig& config) {
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
  std::vector<std::pair<std::string, ct::Sparsity>> pruned_seen_;  // as written
  std::vector<std::string> dense_seen_;  // written, not pruned
  std::vector<std::string> dense_pruned_;  // written as org.qforge.pruned/1 (dense)
};

std::string actorder_name(ct::ActOrder a) {
  return a == ct::ActOrder::group ? "group" : a == ct::ActOrder::weight ? "static" : "";
}

// The packed result of a pack-quantized linear: its tensors as stored, for
// the affine layer to check and run.
QuantResult pack_quantized_result(const TensorStore& store, const std::string& model_dir,
                                  const std::string& name, const ct::Scheme& scheme, int64_t out,
                                  int64_t in) {
  QuantResult r;
  r.format = kPackedFormat;
  json meta = {{QFORGE_CT_META_NUM_BITS, scheme.num_bits},
               {QFORGE_CT_META_SYMMETRIC, scheme.symmetric},
               {QFORGE_CT_META_STRATEGY, scheme.strategy == ct::Strategy::channel ? "channel" : "group"},
               {QFORGE_CT_META_GROUP_SIZE, scheme.group_size},
               {QFORGE_CT_META_IN_FEATURES, in},
               {QFORGE_CT_META_OUT_FEATURES, out}};
  const std::string act = actorder_name(scheme.actorder);
  meta[QFORGE_CT_META_ACTORDER] = act.empty() ? json(nullptr) : json(act);
  r.metadata = meta.dump();
  for (const char* t : {QFORGE_CT_WEIGHT_PACKED, QFORGE_CT_WEIGHT_SCALE, QFORGE_CT_WEIGHT_SHAPE,
                        QFORGE_CT_WEIGHT_ZERO_POINT, QFORGE_CT_WEIGHT_G_IDX, "bias"}) {
    const std::string tensor = name + "." + t;
    if (store.contains(tensor)) r.tensors[t] = store.view(tensor);
  }
  if (!scheme.symmetric && !r.tensors.count(QFORGE_CT_WEIGHT_ZERO_POINT))
    throw UsageError(fmt::format("{}: {} is asymmetric but has no {}", model_dir, name,
                                 QFORGE_CT_WEIGHT_ZERO_POINT));
  if (scheme.symmetric && r.tensors.count(QFORGE_CT_WEIGHT_ZERO_POINT))
    throw UsageError(fmt::format("{}: {} is symmetric but has a {}", model_dir, name,
                                 QFORGE_CT_WEIGHT_ZERO_POINT));
  return r;
}

// The org.qforge.ct-naive-quantized/1 result of an int-/float-/naive-quantized
// linear: the codec checks the tensors; float32 scales and bias.
QuantResult naive_result(const TensorStore& store, const std::string& model_dir,
                         const std::string& name, const ct::Scheme& scheme) {
  std::map<std::string, at::Tensor> tensors;
  for (const char* t : {QFORGE_CT_WEIGHT, QFORGE_CT_NAIVE_WEIGHT_SCALE, QFORGE_CT_INPUT_SCALE,
                        QFORGE_CT_WEIGHT_ZERO_POINT, QFORGE_CT_WEIGHT_G_IDX, "input_zero_point"})
    if (store.contains(name + "." + t)) tensors[t] = store.view(name + "." + t);
  QuantResult r;
  r.format = kNaiveFormat;
  try {
    const ct::NaiveLinear l = ct::unpack_naive(tensors, scheme);
    r.metadata = ct::naive_metadata(l).dump();
    r.tensors = {{QFORGE_CT_WEIGHT, l.weight}, {QFORGE_CT_NAIVE_WEIGHT_SCALE, l.weight_scale}};
    if (l.input_scale.defined()) r.tensors[QFORGE_CT_INPUT_SCALE] = l.input_scale;
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: {}: {}", model_dir, name, e.what()));
  }
  if (store.contains(name + "." QFORGE_CT_NAIVE_BIAS))
    r.tensors[QFORGE_CT_NAIVE_BIAS] = store.load(name + "." QFORGE_CT_NAIVE_BIAS, at::kFloat);
  return r;
}

LinearLoader ct_loader(const Registry& registry, const std::string& model_dir, const json& q,
                       const std::string& where) {
  // Every group's scheme is checked now, before any layer is read, and the
  // inference layers they need are looked up.
  std::set<std::string> formats;
  try {
    for (const ct::Scheme& s : ct::group_schemes(q))
      formats.insert(s.format == ct::Format::pack_quantized ? kPackedFormat : kNaiveFormat);
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: {}", where, e.what()));
  }
  for (const auto& f : formats)
    if (registry.find_inference_layer(f) == nullptr)
      throw UsageError(fmt::format("{} is a compressed-tensors checkpoint, but no loaded inference "
                                   "layer reads {} (see `qforge plugins`)",
                                   model_dir, f));
  return [=, &registry](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    // Quantized linears have a weight_scale (and pack-quantized ones a weight_packed).
    const bool packed = store.contains(l.name + "." QFORGE_CT_WEIGHT_PACKED);
    if (!packed && !store.contains(l.name + "." QFORGE_CT_NAIVE_WEIGHT_SCALE)) return false;
    std::optional<ct::Scheme> scheme;
    try {
      scheme = ct::parse_scheme(q, l.name);
    } catch (const std::exception& e) {
      throw UsageError(fmt::format("{}: {}", where, e.what()));
    }
    if (!scheme)
      throw UsageError(fmt::format("{}: {} is quantized, but no config group targets it", where,
                                   l.name));
    if (packed != (scheme->format == ct::Format::pack_quantized))
      throw UsageError(fmt::format("{}: {} {} {}, but its config group's format is {}", where,
                                   l.name, packed ? "has" : "has no", QFORGE_CT_WEIGHT_PACKED,
                                   ct::format_name(scheme->format)));
    attach_packed(registry, model_dir, l,
                  packed ? pack_quantized_result(store, model_dir, l.name, *scheme, out, in)
                         : naive_result(store, model_dir, l.name, *scheme),
                  out, in);
    return true;
  };
}

}  // namespace

std::unique_ptr<SaveFormat> make_compressed_tensors_format() {
  return std::make_unique<CompressedTensors>();
}

const CheckpointReader kCompressedTensorsReader = {"compressed-tensors", "compressed-tensors", ct_loader};

}  // namespace qforge::host
