// The row of "org.qforge.ct-pack-quantized/1"
// (sdk/include/qforge/formats/ct_pack_quantized_v1.h): compressed-tensors
// pack-quantized, as qforge reads it from a checkpoint.
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/ct_pack_quantized_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

#include "formats.hpp"

namespace qforge::kernels::formats {
namespace {

constexpr const char* kId = QFORGE_FORMAT_CT_PACK_QUANTIZED_V1;

AffineShape read_metadata(const nlohmann::json& m) {
  nlohmann::json shape = m;  // "group_size" -1 (strategy channel): one group per row
  if (auto g = m.find(QFORGE_CT_META_GROUP_SIZE); g != m.end() && g->is_number_integer() &&
                                                  g->get<int64_t>() == -1 &&
                                                  m.contains(QFORGE_CT_META_IN_FEATURES))
    shape[QFORGE_CT_META_GROUP_SIZE] = m[QFORGE_CT_META_IN_FEATURES];
  meta_bool(m, kId, QFORGE_CT_META_SYMMETRIC, /*required=*/true);
  return read_affine_shape(shape, kId, QFORGE_CT_META_NUM_BITS, QFORGE_CT_META_GROUP_SIZE,
                           QFORGE_CT_META_IN_FEATURES, QFORGE_CT_META_OUT_FEATURES);
}

// tensors: weight_packed, weight_scale, weight_shape, weight_zero_point,
// weight_g_idx, bias (the specs' order).
AffineWeight describe(const AffineShape& s, const std::vector<const TensorData*>& tensors) {
  const TensorData &packed = *tensors[0], &scale = *tensors[1], &shape = *tensors[2];
  const int64_t out = s.out_features, in = s.in_features;
  const auto* dims = static_cast<const int64_t*>(shape.data);
  if (dims[0] != out || dims[1] != in)
    invalid_argument(std::string(kId) + ": weight_shape says [" + std::to_string(dims[0]) + ", " +
                     std::to_string(dims[1]) + "], the layer is [" + std::to_string(out) + ", " +
                     std::to_string(in) + "]");
  AffineWeight a;
  a.scales.resize(static_cast<size_t>(s.groups * out));
  const std::vector<float> scale_rows = to_float(scale);  // [out, groups]
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < s.groups; ++g) {
      float v = scale_rows[o * s.groups + g];
      if (!std::isfinite(v)) invalid_argument(std::string(kId) + ": weight_scale must be finite");
      a.scales[g * out + o] = v;
    }
  // Zero points: packed along the outputs, column g per group; 2^(b-1) when absent.
  a.zeros.assign(static_cast<size_t>(s.groups * out), static_cast<float>(1 << (s.bits - 1)));
  if (const TensorData* zp = tensors[3]) {
    const int64_t words = words_for(out, s.bits);
    std::vector<uint32_t> column(static_cast<size_t>(words));
    std::vector<uint8_t> z(static_cast<size_t>(out));
    const auto* w = static_cast<const uint32_t*>(zp->data);
    for (int64_t g = 0; g < s.groups; ++g) {
      for (int64_t k = 0; k < words; ++k) column[k] = w[k * s.groups + g];
      unpack_bits(column.data(), out, s.bits, z.data());
      for (int64_t o = 0; o < out; ++o) a.zeros[g * out + o] = static_cast<float>(z[o]);
    }
  }
  const int32_t* g_idx = nullptr;
  if (const TensorData* gi = tensors[4]) {
    g_idx = static_cast<const int32_t*>(gi->data);
    for (int64_t i = 0; i < in; ++i)
      if (g_idx[i] < 0 || g_idx[i] >= s.groups)
        invalid_argument(std::string(kId) + ": weight_g_idx values must be in [0, " +
                         std::to_string(s.groups) + ")");
  }
  if (tensors[5] != nullptr) a.bias = to_float(*tensors[5]);

  // weight_packed [out, words(in)]: output o's stream is row o.
  point_weight(a, s, static_cast<const uint32_t*>(packed.data), 1, words_for(in, s.bits), g_idx);
  return a;
}


// Tuning: scales in weight_scale's dtype; zero points integers in [0, maxq],
// or 2^(b-1) when the layer stores none (symmetric).
void round_params(const AffineShape& s, const std::vector<const TensorData*>& tensors,
                  float* scales, float* zeros) {
  const int64_t n = s.groups * s.out_features;
  for (int64_t k = 0; k < n; ++k) scales[k] = stored_as(scales[k], tensors[1]->dtype);
  if (tensors[3] == nullptr)
    std::fill(zeros, zeros + n, static_cast<float>(1 << (s.bits - 1)));
  else
    round_zeros(zeros, n, 0.f, static_cast<float>((1 << s.bits) - 1));
}

// weight_scale [out, groups]; weight_zero_point [words(out), groups], column g packed.
void write_params(const AffineShape& s, const float* scales, const float* zeros,
                  const std::vector<const TensorData*>& tensors) {
  const int64_t out = s.out_features;
  std::vector<float> rows(static_cast<size_t>(out * s.groups));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < s.groups; ++g) rows[o * s.groups + g] = scales[g * out + o];
  store_floats(*tensors[1], rows.data(), out * s.groups);
  if (tensors[3] == nullptr) return;
  const int64_t words = words_for(out, s.bits);
  auto* zp = static_cast<uint32_t*>(const_cast<void*>(tensors[3]->data));
  std::vector<uint8_t> z(static_cast<size_t>(out));
  std::vector<uint32_t> column(static_cast<size_t>(words));
  for (int64_t g = 0; g < s.groups; ++g) {
    for (int64_t o = 0; o < out; ++o) z[o] = static_cast<uint8_t>(zeros[g * out + o]);
    pack_bits(z.data(), out, s.bits, column.data());
    for (int64_t k = 0; k < words; ++k) zp[k * s.groups + g] = column[k];
  }
}

}  // namespace

const AffineFormat ct_pack_quantized_v1 = {
    kId,
    {{QFORGE_CT_WEIGHT_PACKED,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.out_features, words_for(s.in_features, s.bits)};
      },
      true},
     {QFORGE_CT_WEIGHT_SCALE,
      {{kDLFloat, 16, 1}, {kDLBfloat, 16, 1}, {kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features, s.groups}; },
      true},
     {QFORGE_CT_WEIGHT_SHAPE,
      {{kDLInt, 64, 1}},
      [](const AffineShape&) { return std::vector<int64_t>{2}; },
      true},
     {QFORGE_CT_WEIGHT_ZERO_POINT,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{words_for(s.out_features, s.bits), s.groups};
      },
      false},
     {QFORGE_CT_WEIGHT_G_IDX,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.in_features}; },
      false},
     {"bias",
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
