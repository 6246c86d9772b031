// The row of "org.qforge.gptq/1" (sdk/include/qforge/formats/gptq_v1.h).
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/gptq_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "formats.hpp"

namespace qforge::kernels::formats {
namespace {

constexpr const char* kId = QFORGE_FORMAT_GPTQ_V1;

AffineShape read_metadata(const nlohmann::json& m) {
  const AffineShape shape =
      read_affine_shape(m, kId, QFORGE_GPTQ_V1_BITS, QFORGE_GPTQ_V1_GROUP_SIZE,
                        QFORGE_GPTQ_V1_IN_FEATURES, QFORGE_GPTQ_V1_OUT_FEATURES);
  for (const char* key :
       {QFORGE_GPTQ_V1_SYM, QFORGE_GPTQ_V1_DESC_ACT, QFORGE_GPTQ_V1_STATIC_GROUPS})
    meta_bool(m, kId, key, /*required=*/false);
  const auto format = m.find(QFORGE_GPTQ_V1_CHECKPOINT_FORMAT);
  if (format != m.end() &&
      (!format->is_string() || format->get<std::string>() != QFORGE_GPTQ_V1_CHECKPOINT_FORMAT_V1))
    invalid_argument(std::string(kId) + " metadata \"" QFORGE_GPTQ_V1_CHECKPOINT_FORMAT
                                        "\" must be \"" QFORGE_GPTQ_V1_CHECKPOINT_FORMAT_V1
                                        "\" (v1)");
  return shape;
}

// tensors: qweight, qzeros, scales, g_idx, bias (the specs' order).
AffineWeight describe(const AffineShape& s, const std::vector<const TensorData*>& tensors) {
  const TensorData &qweight = *tensors[0], &qzeros = *tensors[1], &scales = *tensors[2],
                   &g_idx = *tensors[3];
  const int64_t out = s.out_features;
  const auto* groups = static_cast<const int32_t*>(g_idx.data);
  for (int64_t i = 0; i < s.in_features; ++i)
    if (groups[i] < 0 || groups[i] >= s.groups)
      invalid_argument(std::string(kId) + ": g_idx values must be in [0, " +
                       std::to_string(s.groups) + ")");
  AffineWeight a;
  a.scales = to_float(scales);
  for (float v : a.scales)
    if (!std::isfinite(v)) invalid_argument(std::string(kId) + ": scales must be finite");
  // qzeros [groups, words(out)]: zero − 1 of every output -> zero points [groups, out].
  a.zeros.resize(static_cast<size_t>(s.groups * out));
  const int64_t zero_words = words_for(out, s.bits);
  std::vector<uint8_t> z(static_cast<size_t>(out));
  for (int64_t g = 0; g < s.groups; ++g) {
    unpack_bits(static_cast<const uint32_t*>(qzeros.data) + g * zero_words, out, s.bits, z.data());
    for (int64_t o = 0; o < out; ++o)
      a.zeros[g * out + o] = static_cast<float>(z[o]) + QFORGE_GPTQ_V1_ZERO_OFFSET;
  }
  if (tensors[4] != nullptr) a.bias = to_float(*tensors[4]);

  // qweight [words, out]: output o's stream is column o.
  point_weight(a, s, static_cast<const uint32_t*>(qweight.data), out, 1, groups);
  return a;
}


// Tuning: float16 scales; zero points integers in [1, maxq] (v1 stores zero − 1).
void round_params(const AffineShape& s, const std::vector<const TensorData*>&, float* scales,
                  float* zeros) {
  const int64_t n = s.groups * s.out_features;
  for (int64_t k = 0; k < n; ++k) scales[k] = stored_as(scales[k], DLDataType{kDLFloat, 16, 1});
  round_zeros(zeros, n, QFORGE_GPTQ_V1_ZERO_OFFSET, static_cast<float>((1 << s.bits) - 1));
}

// scales [groups, out] float16; qzeros [groups, words(out)]: zero − 1 packed.
void write_params(const AffineShape& s, const float* scales, const float* zeros,
                  const std::vector<const TensorData*>& tensors) {
  const int64_t out = s.out_features, words = words_for(out, s.bits);
  store_floats(*tensors[2], scales, s.groups * out);
  auto* qz = static_cast<uint32_t*>(const_cast<void*>(tensors[1]->data));
  std::vector<uint8_t> z(static_cast<size_t>(out));
  for (int64_t g = 0; g < s.groups; ++g) {
    for (int64_t o = 0; o < out; ++o)
      z[o] = static_cast<uint8_t>(zeros[g * out + o] - QFORGE_GPTQ_V1_ZERO_OFFSET);
    pack_bits(z.data(), out, s.bits, qz + g * words);
  }
}

}  // namespace

const AffineFormat gptq_v1 = {
    kId,
    {{QFORGE_GPTQ_V1_QWEIGHT,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{words_for(s.in_features, s.bits), s.out_features};
      },
      true},
     {QFORGE_GPTQ_V1_QZEROS,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.groups, words_for(s.out_features, s.bits)};
      },
      true},
     {QFORGE_GPTQ_V1_SCALES,
      {{kDLFloat, 16, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.groups, s.out_features};
      },
      true},
     {QFORGE_GPTQ_V1_G_IDX,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.in_features}; },
      true},
     // Hugging Face GPTQ checkpoints store the bias in float16 or bfloat16.
     {QFORGE_GPTQ_V1_BIAS,
      {{kDLFloat, 32, 1}, {kDLFloat, 16, 1}, {kDLBfloat, 16, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features}; },
      false}},
    &read_metadata,
    &describe,
    /*transformed=*/false,
    &round_params,
    &write_params,
};

}  // namespace qforge::kernels::formats
