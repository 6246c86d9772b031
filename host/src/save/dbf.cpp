// --save-format dbf: the Hugging Face layout OneComp's DBF inference layer
// (DoubleBinaryLinear) reads (research/onecomp.md §3.4). Each quantized
// linear stores
//   <layer>.scaling0  float16 [m]   s0, the input scale
//   <layer>.scaling2  float16 [k]   s2, the middle scale (k is its length)
//   <layer>.scaling4  float16 [n]   s4, the output scale
//   <layer>.bp1       uint8         S_B [k, m] flattened row-major, 8 signs per
//   <layer>.bp3       uint8         S_A [n, k]  byte MSB first, +1 → 1, the tail
//                                   of the last byte 1 (no per-row padding)
//   <layer>.bias      float16 [n]   when the layer has one (a dense tensor)
// and config.json gets quant_method "dbf" with a per-layer "quantization_bits"
// table. It is the packed format org.qforge.dbf/1 with its sign planes
// re-flattened; qforge reads it back into dbf/1. A layer whose k exceeds
// min(n, m) (org.qforge.dbf allows it) is read by qforge and by OneComp's
// layer, which takes k from scaling2, but not by OneComp's vLLM plugin, which
// recomputes k from the bits and clamps it.
#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "formats.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/save/checkpoint.hpp"

using nlohmann::json;
using nlohmann::ordered_json;

namespace qforge::host {
namespace {

constexpr const char* kPackedFormat = "org.qforge.dbf/1";

// dbf/1's per-row sign planes [rows, ceil(cols/8)] <-> one flattened stream.
at::Tensor flatten_signs(const at::Tensor& rows_packed, int64_t rows, int64_t cols) {
  const int64_t row_bytes = (cols + 7) / 8, total = rows * cols;
  at::Tensor out = at::full({(total + 7) / 8}, 0xFF, at::kByte);
  const uint8_t* src = rows_packed.contiguous().data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      if (!(src[r * row_bytes + c / 8] & (0x80u >> (c % 8)))) {
        const int64_t bit = r * cols + c;
        dst[bit / 8] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
      }
  return out;
}

at::Tensor rows_of_signs(const at::Tensor& flat, int64_t rows, int64_t cols) {
  const int64_t row_bytes = (cols + 7) / 8;
  at::Tensor out = at::full({rows, row_bytes}, 0xFF, at::kByte);
  const uint8_t* src = flat.contiguous().data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t bit = r * cols + c;
      if (!(src[bit / 8] & (0x80u >> (bit % 8))))
        dst[r * row_bytes + c / 8] &= static_cast<uint8_t>(~(0x80u >> (c % 8)));
    }
  return out;
}

class DbfFormat final : public SaveFormat {
 public:
  std::string name() const override { return "dbf"; }

  void check_plan(const std::vector<std::string>& formats, const std::vector<std::string>&,
                  const ModelConfig&) const override {
    if (std::find(formats.begin(), formats.end(), kPackedFormat) == formats.end())
      throw UsageError(fmt::format("--save-format dbf needs layers packed in {} (method "
                                   "org.qforge.dbf)", kPackedFormat));
  }

  NamedTensors packed_linear(const std::string& layer, const QuantResult& q) override {
    if (q.format != kPackedFormat)
      throw UsageError(fmt::format("--save-format dbf: layer {} came in {}, not {}", layer,
                                   q.format, kPackedFormat));
    const json m = json::parse(q.metadata, nullptr, false);
    const std::string where = fmt::format("layer {} metadata", layer);
    const int64_t n = json_int(m, "out_features", where), in = json_int(m, "in_features", where),
                  k = json_int(m, "k", where);
    auto tensor = [&](const char* name) {
      auto it = q.tensors.find(name);
      if (it == q.tensors.end())
        throw UsageError(fmt::format("layer {}: its {} result has no {}", layer, q.format, name));
      return it->second;
    };
    NamedTensors out = {
        {layer + ".scaling0", tensor("s0").to(at::kHalf)},
        {layer + ".scaling2", tensor("s2").to(at::kHalf)},
        {layer + ".scaling4", tensor("s4").to(at::kHalf)},
        {layer + ".bp1", flatten_signs(tensor("sign_b"), k, in)},
        {layer + ".bp3", flatten_signs(tensor("sign_a"), n, k)}};
    if (q.tensors.count("bias")) out.emplace_back(layer + ".bias", tensor("bias").to(at::kHalf));
    bits_[layer] = double(k) * (n + in) / (double(n) * in);
    return out;
  }

  ordered_json quantization_config(const std::vector<LayerReport>&, const ModelConfig&,
                                   const std::vector<std::string>&) const override {
    if (bits_.empty()) throw UsageError("--save-format dbf: no layer was quantized");
    ordered_json table = ordered_json::object();
    for (const auto& [layer, bits] : bits_) table[layer] = bits;
    return {{"quant_method", "dbf"}, {"producer", "qforge"}, {"quantization_bits", table}};
  }

 private:
  std::map<std::string, double> bits_;  // sign-plane bits per weight of each layer
};

// Reads each "<layer>.scaling2" linear back into org.qforge.dbf/1.
LinearLoader dbf_loader(const Registry& registry, const std::string& dir, const json&,
                        const std::string&) {
  return [&registry, dir](const TensorStore& store, Linear& l, int64_t out, int64_t in, bool) {
    if (!store.contains(l.name + ".scaling2")) return false;
    const TensorInfo& s2 = store.info(l.name + ".scaling2");
    if (s2.shape.size() != 1 || s2.shape[0] < 1)
      throw ModelFileError(fmt::format("{}: layer {}: scaling2 must be a vector (its length is k)",
                                       dir, l.name));
    const int64_t k = s2.shape[0];
    auto get = [&](const std::string& t, at::ScalarType dtype, std::vector<int64_t> shape) {
      const std::string name = l.name + "." + t;
      if (!store.contains(name))
        throw ModelFileError(fmt::format("{}: layer {} has no {}", dir, l.name, t));
      at::Tensor v = store.load(name, dtype);
      if (v.sizes() != at::IntArrayRef(shape))
        throw ModelFileError(fmt::format("{}: layer {}: {} has shape [{}]; k = {} (the length of "
                                         "scaling2) and the layer's {}x{} shape imply [{}]",
                                         dir, l.name, t, fmt::join(v.sizes(), ", "), k, out, in,
                                         fmt::join(shape, ", ")));
      return v;
    };
    QuantResult r;
    r.format = kPackedFormat;
    r.metadata = json{{"out_features", out}, {"in_features", in}, {"k", k}}.dump();
    r.tensors["s2"] = get("scaling2", at::kHalf, {k});
    r.tensors["s0"] = get("scaling0", at::kHalf, {in});
    r.tensors["s4"] = get("scaling4", at::kHalf, {out});
    r.tensors["sign_b"] = rows_of_signs(get("bp1", at::kByte, {(k * in + 7) / 8}), k, in);
    r.tensors["sign_a"] = rows_of_signs(get("bp3", at::kByte, {(out * k + 7) / 8}), out, k);
    if (store.contains(l.name + ".bias")) r.tensors["bias"] = get("bias", at::kFloat, {out});
    attach_packed(registry, dir, l, r, out, in);
    return true;
  };
}

}  // namespace

std::unique_ptr<SaveFormat> make_dbf_format() { return std::make_unique<DbfFormat>(); }

const CheckpointReader kDbfReader = {"dbf", "dbf", &dbf_loader};

}  // namespace qforge::host
