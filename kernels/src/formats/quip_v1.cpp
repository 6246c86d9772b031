// The row of "org.qforge.quip/1" (sdk/include/qforge/formats/quip_v1.h): an
// affine grid Q̂ (codes as org.qforge.rtn/1, float16 scales and zero points)
// between the input transform V (after x ⊘ rescale) and the output
// transform Uᵀ, both randomized Hadamard transforms.
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/quip_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "formats.hpp"

namespace qforge::kernels::formats {
namespace {

constexpr const char* kId = QFORGE_FORMAT_QUIP_V1;

TransformShape read_transform(const nlohmann::json& m, const char* pow2_key, const char* base_key,
                              const char* kind_key, const char* seed_key, int64_t size,
                              bool may_be_none) {
  TransformShape t;
  const auto k = m.find(kind_key);
  if (may_be_none && k != m.end() && *k == QFORGE_QUIP_V1_KIND_NONE) return t;
  t.pow2 = meta_int(m, kId, pow2_key, 1, kMaxAffineDim);
  t.base = meta_int(m, kId, base_key, 1, kMaxHadamardBase);
  const std::string where = std::string(kId) + " metadata";
  if ((t.pow2 & (t.pow2 - 1)) != 0)
    invalid_argument(where + " \"" + pow2_key + "\" must be a power of two");
  if (t.pow2 * t.base != size)
    invalid_argument(where + ": " + pow2_key + " · " + base_key + " = " +
                     std::to_string(t.pow2 * t.base) + ", not the size " + std::to_string(size));
  const auto it = m.find(kind_key);
  const std::string kind = it != m.end() && it->is_string() ? it->get<std::string>() : "";
  if (kind == QFORGE_QUIP_V1_KIND_ORTHOGONAL) {
    t.stored_base = true;
  } else if (kind == QFORGE_QUIP_V1_KIND_RANDOM) {
    t.random_base = true;
    t.seed = static_cast<uint64_t>(meta_int(m, kId, seed_key, 0, (int64_t{1} << 53) - 1));
  } else if (kind == QFORGE_QUIP_V1_KIND_HADAMARD) {
    if (!hadamard_built_in(t.base))
      invalid_argument(where + ": no Hadamard matrix of order " + std::to_string(t.base) +
                       " is built in (\"" + kind_key + "\" must be \"orthogonal\" with a stored base)");
  } else {
    invalid_argument(where + " \"" + kind_key + "\" must be \"hadamard\", \"random\" or \"orthogonal\"" +
                     (may_be_none ? " or \"none\"" : ""));
  }
  return t;
}

AffineShape read_metadata(const nlohmann::json& m) {
  AffineShape s = read_affine_shape(m, kId, QFORGE_QUIP_V1_BITS, QFORGE_QUIP_V1_GROUP_SIZE,
                                    QFORGE_QUIP_V1_IN_FEATURES, QFORGE_QUIP_V1_OUT_FEATURES);
  s.output = read_transform(m, QFORGE_QUIP_V1_U_POW2, QFORGE_QUIP_V1_U_BASE,
                            QFORGE_QUIP_V1_U_BASE_KIND, QFORGE_QUIP_V1_U_SEED, s.out_features,
                            /*may_be_none=*/true);
  s.input = read_transform(m, QFORGE_QUIP_V1_V_POW2, QFORGE_QUIP_V1_V_BASE,
                           QFORGE_QUIP_V1_V_BASE_KIND, QFORGE_QUIP_V1_V_SEED, s.in_features,
                           /*may_be_none=*/false);
  return s;
}

// The transform, or null for none (then neither signs nor base may be given).
std::shared_ptr<const RandomizedHadamard> transform(const TransformShape& t, const TensorData* signs,
                                                    const char* sign_name, const TensorData* base,
                                                    const char* base_name) {
  if (t.pow2 == 0) {
    if (signs != nullptr || base != nullptr)
      invalid_argument(std::string(kId) + ": '" + sign_name + "' or '" + base_name +
                       "' given for a transform of kind none");
    return nullptr;
  }
  if (signs == nullptr) invalid_argument(std::string(kId) + ": tensor '" + sign_name + "' is missing");
  std::vector<float> sv(static_cast<size_t>(t.pow2 * t.base));
  const auto* sd = static_cast<const int8_t*>(signs->data);
  for (size_t k = 0; k < sv.size(); ++k) {
    if (sd[k] != 1 && sd[k] != -1) invalid_argument(std::string(kId) + ": signs must be +1 or -1");
    sv[k] = sd[k];
  }
  std::vector<float> b;
  if (t.stored_base) {
    if (base == nullptr) invalid_argument(std::string(kId) + ": tensor '" + base_name + "' is missing");
    b = to_float(*base);
    for (float v : b)
      if (!std::isfinite(v)) invalid_argument(std::string(kId) + ": '" + base_name + "' is not finite");
  } else {
    if (base != nullptr)
      invalid_argument(std::string(kId) + ": tensor '" + base_name + "' given for a base that is not stored");
    if (t.random_base) {
      b = random_orthogonal(t.base, t.seed);
    } else if (t.base > 1) {
      b = hadamard_matrix(t.base);
      for (float& v : b) v /= std::sqrt(static_cast<float>(t.base));
    }
  }
  return std::make_shared<const RandomizedHadamard>(t.pow2, t.base, std::move(sv), std::move(b));
}

// tensors: qweight, scales, zeros, rescale, sign_u, sign_v, base_u, base_v, bias.
AffineWeight describe(const AffineShape& s, const std::vector<const TensorData*>& tensors) {
  AffineWeight a;
  a.scales = to_float(*tensors[1]);  // [out, groups]
  const TensorData& zeros = *tensors[2];
  if (zeros.dtype.code == kDLUInt) {
    const auto* z = static_cast<const uint8_t*>(zeros.data);
    a.zeros.assign(z, z + s.out_features * s.groups);
  } else {
    a.zeros = to_float(zeros);
  }
  const float maxq = static_cast<float>((1 << s.bits) - 1);
  for (float z : a.zeros)
    if (!(z >= 0.f && z <= maxq))
      invalid_argument(std::string(kId) + ": zeros must be in [0, 2^bits - 1]");
  a.rescale = to_float(*tensors[3]);
  for (float r : a.rescale)
    if (!(r > 0.f && std::isfinite(r))) invalid_argument(std::string(kId) + ": rescale must be > 0");
  if (tensors[8] != nullptr) a.bias = to_float(*tensors[8]);
  a.output_transform =
      transform(s.output, tensors[4], QFORGE_QUIP_V1_SIGN_U, tensors[6], QFORGE_QUIP_V1_BASE_U);
  a.input_transform =
      transform(s.input, tensors[5], QFORGE_QUIP_V1_SIGN_V, tensors[7], QFORGE_QUIP_V1_BASE_V);

  QuantizedWeight& w = a.weight;  // as org.qforge.rtn/1, scales and zero points [out, groups]
  w.bits = s.bits;
  w.in_features = s.in_features;
  w.out_features = s.out_features;
  w.codes = static_cast<const uint32_t*>(tensors[0]->data);
  w.code_word_stride = 1;
  w.code_out_stride = words_for(s.in_features, s.bits);
  w.groups = s.groups;
  w.group_size = s.group_size;
  w.scales = a.scales.data();
  w.zeros = a.zeros.data();
  w.scale_group_stride = w.zero_group_stride = 1;
  w.scale_out_stride = w.zero_out_stride = s.groups;
  return a;
}

std::vector<int64_t> per_out_group(const AffineShape& s) { return {s.out_features, s.groups}; }


// Tuning: float16 scales; zero points integers in [0, maxq] when stored as
// uint8, float16 values in [0, maxq] when stored as float16.
void round_params(const AffineShape& s, const std::vector<const TensorData*>& tensors,
                  float* scales, float* zeros) {
  const int64_t n = s.groups * s.out_features;
  const float maxq = static_cast<float>((1 << s.bits) - 1);
  for (int64_t k = 0; k < n; ++k) scales[k] = stored_as(scales[k], DLDataType{kDLFloat, 16, 1});
  if (tensors[2]->dtype.code == kDLUInt) {
    round_zeros(zeros, n, 0.f, maxq);
  } else {
    for (int64_t k = 0; k < n; ++k)
      zeros[k] = stored_as(std::min(std::max(zeros[k], 0.f), maxq), tensors[2]->dtype);
  }
}

// scales and zeros [out, groups], from [groups][out].
void write_params(const AffineShape& s, const float* scales, const float* zeros,
                  const std::vector<const TensorData*>& tensors) {
  const int64_t out = s.out_features, n = out * s.groups;
  std::vector<float> sc(static_cast<size_t>(n)), zr(static_cast<size_t>(n));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < s.groups; ++g) {
      sc[o * s.groups + g] = scales[g * out + o];
      zr[o * s.groups + g] = zeros[g * out + o];
    }
  store_floats(*tensors[1], sc.data(), n);
  if (tensors[2]->dtype.code == kDLUInt) {
    auto* z = static_cast<uint8_t*>(const_cast<void*>(tensors[2]->data));
    for (int64_t k = 0; k < n; ++k) z[k] = static_cast<uint8_t>(zr[k]);
  } else {
    store_floats(*tensors[2], zr.data(), n);
  }
}

}  // namespace

const AffineFormat quip_v1 = {
    kId,
    {{QFORGE_QUIP_V1_QWEIGHT, {{kDLInt, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features, words_for(s.in_features, s.bits)}; },
      true},
     {QFORGE_QUIP_V1_SCALES, {{kDLFloat, 16, 1}}, &per_out_group, true},
     {QFORGE_QUIP_V1_ZEROS, {{kDLUInt, 8, 1}, {kDLFloat, 16, 1}}, &per_out_group, true},
     {QFORGE_QUIP_V1_RESCALE, {{kDLFloat, 16, 1}, {kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.in_features}; }, true},
     {QFORGE_QUIP_V1_SIGN_U, {{kDLInt, 8, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features}; }, false},
     {QFORGE_QUIP_V1_SIGN_V, {{kDLInt, 8, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.in_features}; }, true},
     {QFORGE_QUIP_V1_BASE_U, {{kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.output.base, s.output.base}; }, false},
     {QFORGE_QUIP_V1_BASE_V, {{kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.input.base, s.input.base}; }, false},
     {QFORGE_QUIP_V1_BIAS, {{kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features}; }, false}},
    &read_metadata,
    &describe,
    /*transformed=*/true,
    &round_params,
    &write_params,
};

}  // namespace qforge::kernels::formats
