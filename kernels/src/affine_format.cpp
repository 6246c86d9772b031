// The table of affine grid formats and what every row shares: metadata and
// tensor checks, float conversions, the reference decoding.
#include <qforge/cpp/plugin.hpp>
#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/bitpack.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "formats/formats.hpp"

namespace qforge::kernels {

// The table. A new format is one more row here (see affine_format.hpp).
namespace {
const AffineFormat* const kAffineFormats[] = {&formats::rtn_v1, &formats::gptq_v1,
                                              &formats::ct_pack_quantized_v1, &formats::quip_v1};
}  // namespace

const std::vector<const AffineFormat*>& affine_formats() {
  static const std::vector<const AffineFormat*> rows(std::begin(kAffineFormats),
                                                     std::end(kAffineFormats));
  return rows;
}

const AffineFormat* find_affine_format(const char* id) {
  if (id == nullptr) return nullptr;
  for (const AffineFormat* f : affine_formats())
    if (std::strcmp(f->id, id) == 0) return f;
  return nullptr;
}

const char* const* affine_format_ids() {
  static const std::vector<const char*> ids = [] {
    std::vector<const char*> v;
    for (const AffineFormat* f : affine_formats()) v.push_back(f->id);
    v.push_back(nullptr);
    return v;
  }();
  return ids.data();
}

AffineShape read_affine_shape(const nlohmann::json& m, const char* format, const char* bits,
                              const char* group_size, const char* in_features,
                              const char* out_features) {
  AffineShape s;
  s.bits = static_cast<int>(meta_int(m, format, bits, kMinPackBits, kMaxPackBits));
  s.group_size = meta_int(m, format, group_size, 1, kMaxAffineDim);
  s.in_features = meta_int(m, format, in_features, 1, kMaxAffineDim);
  s.out_features = meta_int(m, format, out_features, 1, kMaxAffineDim);
  s.groups = (s.in_features + s.group_size - 1) / s.group_size;
  return s;
}

nlohmann::json parse_metadata(const std::string& id, const std::string& metadata_json) {
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(metadata_json);
  } catch (const nlohmann::json::exception& e) {
    invalid_argument(id + " metadata is not valid JSON: " + e.what());
  }
  if (!m.is_object()) invalid_argument(id + " metadata must be a JSON object");
  return m;
}

std::vector<const TensorData*> match_tensors(
    const std::string& id, const std::vector<TensorCheck>& checks,
    const std::vector<std::pair<std::string, TensorData>>& tensors) {
  std::vector<const TensorData*> by_check(checks.size(), nullptr);
  for (const auto& [name, t] : tensors) {
    size_t k = 0;
    while (k < checks.size() && name != checks[k].name) ++k;
    if (k == checks.size()) invalid_argument(id + ": unexpected tensor '" + name + "'");
    if (by_check[k] != nullptr) invalid_argument(id + ": tensor '" + name + "' given twice");
    by_check[k] = &t;
  }
  for (size_t k = 0; k < checks.size(); ++k) {
    const TensorCheck& c = checks[k];
    const TensorData* t = by_check[k];
    if (t == nullptr) {
      if (c.required) invalid_argument(id + ": tensor '" + c.name + "' is missing");
      continue;
    }
    const std::string what = id + " tensor '" + c.name + "'";
    bool dtype_ok = false;
    for (const DLDataType& d : c.dtypes) dtype_ok = dtype_ok || same_dtype(t->dtype, d);
    if (!dtype_ok) invalid_argument(what + " has the wrong dtype (" + dtype_str(t->dtype) + ")");
    if (t->shape != c.shape)
      invalid_argument(what + " must have shape " + shape_str(c.shape) + " for the metadata" +
                       c.why + ", got " + shape_str(t->shape));
    if (t->data == nullptr) invalid_argument(what + " has no data");
  }
  return by_check;
}

AffineWeight describe_affine(const AffineFormat& format, const std::string& metadata_json,
                             const std::vector<std::pair<std::string, TensorData>>& tensors) {
  const AffineShape shape = format.read_metadata(parse_metadata(format.id, metadata_json));
  std::vector<TensorCheck> checks;
  for (const TensorSpec& spec : format.tensors)
    checks.push_back({spec.name, spec.dtypes, spec.shape(shape), spec.required, ""});
  AffineWeight w = format.describe(shape, match_tensors(format.id, checks, tensors));
  w.shape = shape;
  return w;
}

void read_codes(const QuantizedWeight& w, int64_t o, uint8_t* codes) {
  const int64_t words = words_for(w.in_features, w.bits);
  std::vector<uint32_t> stream(static_cast<size_t>(words));
  for (int64_t k = 0; k < words; ++k)
    stream[k] = w.codes[k * w.code_word_stride + o * w.code_out_stride];
  unpack_bits(stream.data(), w.in_features, w.bits, codes);
}

void dequantize_reference(const QuantizedWeight& w, float* dst) {
  std::vector<uint8_t> q(static_cast<size_t>(w.in_features));
  for (int64_t o = 0; o < w.out_features; ++o) {
    read_codes(w, o, q.data());
    for (int64_t i = 0; i < w.in_features; ++i) {
      const int64_t g = w.g_idx != nullptr ? w.g_idx[i] : i / w.group_size;
      const float scale = w.scales[g * w.scale_group_stride + o * w.scale_out_stride];
      const float zero = w.zeros[g * w.zero_group_stride + o * w.zero_out_stride];
      dst[o * w.in_features + i] = scale * (static_cast<float>(q[i]) - zero);
    }
  }
}

int64_t meta_int(const nlohmann::json& m, const char* format, const char* key, int64_t lo,
                 int64_t hi) {
  const std::string where = std::string(format) + " metadata \"" + key + "\"";
  const auto it = m.find(key);
  if (it == m.end()) invalid_argument(std::string(format) + " metadata lacks \"" + key + "\"");
  if (!it->is_number_integer()) invalid_argument(where + " must be an integer");
  const bool too_big = it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi);
  const int64_t v = too_big ? hi + 1 : it->get<int64_t>();
  if (v < lo || v > hi)
    invalid_argument(where + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                     "], got " + it->dump());
  return v;
}

void meta_bool(const nlohmann::json& m, const char* format, const char* key, bool required) {
  const auto it = m.find(key);
  if ((it == m.end() && required) || (it != m.end() && !it->is_boolean()))
    invalid_argument(std::string(format) + " metadata \"" + key + "\" must be true or false");
}

namespace {

// The float32 value of float16 bits (exact: every float16 is a float32).
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  uint32_t bits = sign;
  if (e == 0x1F) {
    bits |= 0x7F800000u | (m << 13);  // infinity, NaN
  } else if (e != 0) {
    bits |= ((e + 127 - 15) << 23) | (m << 13);
  } else if (m != 0) {  // subnormal: m 2^-24
    const float f = static_cast<float>(m) * 5.9604645e-08f;
    return sign != 0 ? -f : f;
  }
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

}  // namespace

std::vector<float> to_float(const TensorData& t) {
  int64_t n = 1;
  for (int64_t d : t.shape) n *= d;
  std::vector<float> v(static_cast<size_t>(n));
  if (same_dtype(t.dtype, DLDataType{kDLFloat, 32, 1})) {
    std::memcpy(v.data(), t.data, v.size() * sizeof(float));
  } else if (same_dtype(t.dtype, DLDataType{kDLFloat, 16, 1})) {
    const auto* h = static_cast<const uint16_t*>(t.data);
    for (int64_t k = 0; k < n; ++k) v[k] = half_to_float(h[k]);
  } else if (same_dtype(t.dtype, DLDataType{kDLBfloat, 16, 1})) {
    const auto* h = static_cast<const uint16_t*>(t.data);
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t bits = static_cast<uint32_t>(h[k]) << 16;
      std::memcpy(&v[k], &bits, sizeof(float));
    }
  } else {
    invalid_argument("to_float: " + dtype_str(t.dtype) + " is not a floating type");
  }
  return v;
}

uint16_t float_to_half(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const uint32_t a = b & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0));
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504
  if (a < 0x38800000u) {  // float16 subnormal (or zero): a multiple of 2^-24
    const float v = std::fabs(f) * 16777216.0f;  // exact scaling by 2^24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(v)));
  }
  // normal: keep 10 mantissa bits, round to nearest even
  const uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

uint16_t float_to_bfloat(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((b >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

float stored_as(float f, DLDataType dtype) {
  if (same_dtype(dtype, DLDataType{kDLFloat, 16, 1})) return half_to_float(float_to_half(f));
  if (same_dtype(dtype, DLDataType{kDLBfloat, 16, 1})) {
    const uint32_t bits = static_cast<uint32_t>(float_to_bfloat(f)) << 16;
    float v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  return f;
}

void store_floats(const TensorData& t, const float* values, int64_t n) {
  void* data = const_cast<void*>(t.data);  // the caller's own copy (AffineFormat::write_params)
  if (same_dtype(t.dtype, DLDataType{kDLFloat, 32, 1})) {
    std::memcpy(data, values, static_cast<size_t>(n) * sizeof(float));
  } else if (same_dtype(t.dtype, DLDataType{kDLFloat, 16, 1})) {
    auto* h = static_cast<uint16_t*>(data);
    for (int64_t k = 0; k < n; ++k) h[k] = float_to_half(values[k]);
  } else if (same_dtype(t.dtype, DLDataType{kDLBfloat, 16, 1})) {
    auto* h = static_cast<uint16_t*>(data);
    for (int64_t k = 0; k < n; ++k) h[k] = float_to_bfloat(values[k]);
  } else {
    invalid_argument("store_floats: " + dtype_str(t.dtype) + " is not a floating type");
  }
}

void round_zeros(float* zeros, int64_t n, float lo, float hi) {
  for (int64_t k = 0; k < n; ++k) zeros[k] = std::min(std::max(std::nearbyint(zeros[k]), lo), hi);
}

namespace formats {

void point_weight(AffineWeight& a, const AffineShape& s, const uint32_t* codes,
                  int64_t word_stride, int64_t out_stride, const int32_t* g_idx) {
  QuantizedWeight& w = a.weight;
  w.bits = s.bits;
  w.in_features = s.in_features;
  w.out_features = s.out_features;
  w.codes = codes;
  w.code_word_stride = word_stride;
  w.code_out_stride = out_stride;
  w.groups = s.groups;
  w.g_idx = g_idx;
  w.group_size = s.group_size;
  w.scales = a.scales.data();
  w.zeros = a.zeros.data();
  w.scale_group_stride = w.zero_group_stride = s.out_features;
  w.scale_out_stride = w.zero_out_stride = 1;
}

}  // namespace formats

}  // namespace qforge::kernels
