#include "qforge_host/save/save_format.hpp"

#include <fmt/format.h>

#include "formats.hpp"
#include "qforge_host/base/errors.hpp"

namespace qforge::host {
namespace {

struct Row {
  const char* name;
  std::unique_ptr<SaveFormat> (*make)();
};

// --save-format values, the default first.
const Row kFormats[] = {
    {"dequantized", make_dequantized_format},
    {"gptq", make_gptq_v1_format},
    {"compressed-tensors", make_compressed_tensors_format},
    {"qforge", make_native_format},
    {"dbf", make_dbf_format},
    {"quip", make_quip_format},
};

}  // namespace

void SaveFormat::check_plan(const std::vector<std::string>&, const std::vector<std::string>&,
                            const ModelConfig&) const {}

nlohmann::ordered_json SaveFormat::quantization_config(const std::vector<LayerReport>&,
                                                       const ModelConfig&,
                                                       const std::vector<std::string>&) const {
  return nullptr;
}

std::vector<std::pair<std::string, std::string>> SaveFormat::side_files(
    const nlohmann::ordered_json&) const {
  return {};
}

std::unique_ptr<SaveFormat> make_save_format(const std::string& name) {
  for (const Row& r : kFormats)
    if (name == r.name) return r.make();
  throw UsageError(fmt::format("--save-format '{}': expected one of {}", name, save_format_names()));
}

std::string save_format_names() {
  std::string s;
  for (const Row& r : kFormats) s += (s.empty() ? "" : ", ") + std::string(r.name);
  return s;
}

const std::vector<CheckpointReader>& checkpoint_readers() {
  static const std::vector<CheckpointReader> readers = {kGptqV1Reader, kCompressedTensorsReader,
                                                        kNativeReader, kDbfReader, kQuipReader};
  return readers;
}

void attach_packed(const Registry& registry, const std::string& model_dir, Linear& l,
                   const QuantResult& r, int64_t out, int64_t in) {
  const Component* layer = registry.find_inference_layer(r.format);
  if (layer == nullptr)
    throw UsageError(fmt::format("{}: layer {} is stored in {}, and no loaded inference layer "
                                 "reads it (see `qforge plugins`)",
                                 model_dir, l.name, r.format));
  try {
    l.packed = std::make_shared<PackedLayer>(*layer, r);
  } catch (const std::exception& e) {
    throw UsageError(fmt::format("{}: layer {}: {}", model_dir, l.name, e.what()));
  }
  if (l.packed->out_features() != out || l.packed->in_features() != in)
    throw UsageError(fmt::format("{}: layer {} is [{}, {}], the config implies [{}, {}]", model_dir,
                                 l.name, l.packed->out_features(), l.packed->in_features(), out,
                                 in));
}

bool affine_symmetric(const QuantResult& r, const kernels::AffineTensors& a) {
  const nlohmann::json m = nlohmann::json::parse(r.metadata, nullptr, false);
  if (m.is_object() && m.contains("sym") && m["sym"].is_boolean()) return m["sym"].get<bool>();
  return a.zeros.eq(static_cast<double>(1 << (a.bits - 1))).all().item<bool>();
}

int64_t json_int(const nlohmann::json& m, const char* key, const std::string& where) {
  auto it = m.find(key);
  if (it == m.end() || !it->is_number_integer())
    throw UsageError(fmt::format("{}: \"{}\" must be an integer", where, key));
  return it->get<int64_t>();
}

bool json_bool(const nlohmann::json& m, const char* key, bool fallback, const std::string& where) {
  auto it = m.find(key);
  if (it == m.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw UsageError(fmt::format("{}: \"{}\" must be true or false", where, key));
  return it->get<bool>();
}

}  // namespace qforge::host
