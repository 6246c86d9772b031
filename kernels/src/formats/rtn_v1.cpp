// The row of "org.qforge.rtn/1" (sdk/include/qforge/formats/rtn_v1.h).
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/rtn_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <nlohmann/json.hpp>

#include <string>

#include "formats.hpp"

namespace qforge::kernels::formats {
namespace {

constexpr const char* kId = QFORGE_FORMAT_RTN_V1;

AffineShape read_metadata(const nlohmann::json& m) {
  const AffineShape shape =
      read_affine_shape(m, kId, QFORGE_RTN_V1_BITS, QFORGE_RTN_V1_GROUP_SIZE,
                        QFORGE_RTN_V1_IN_FEATURES, QFORGE_RTN_V1_OUT_FEATURES);
  meta_bool(m, kId, QFORGE_RTN_V1_SYM, /*required=*/true);
  return shape;
}

// tensors: qweight, scales, zeros, bias (the specs' order).
AffineWeight describe(const AffineShape& s, const std::vector<const TensorData*>& tensors) {
  const TensorData &qweight = *tensors[0], &scales = *tensors[1], &zeros = *tensors[2];
  AffineWeight a;
  const int64_t maxq = (int64_t{1} << s.bits) - 1;
  const auto* z = static_cast<const uint8_t*>(zeros.data);
  a.zeros.assign(z, z + s.out_features * s.groups);
  for (float v : a.zeros)
    if (v > maxq)
      invalid_argument(std::string(kId) + ": zeros exceed 2^bits - 1 = " + std::to_string(maxq));
  if (tensors[3] != nullptr) a.bias = to_float(*tensors[3]);

  // qweight [out, words]: output o's stream is row o; scales, zeros [out, groups].
  QuantizedWeight& w = a.weight;
  w.bits = s.bits;
  w.in_features = s.in_features;
  w.out_features = s.out_features;
  w.codes = static_cast<const uint32_t*>(qweight.data);
  w.code_word_stride = 1;
  w.code_out_stride = words_for(s.in_features, s.bits);
  w.groups = s.groups;
  w.group_size = s.group_size;
  w.scales = static_cast<const float*>(scales.data);
  w.scale_group_stride = w.zero_group_stride = 1;
  w.scale_out_stride = w.zero_out_stride = s.groups;
  w.zeros = a.zeros.data();
  return a;
}


// Tuning: float32 scales as they are; integer zero points in [0, maxq].
void round_params(const AffineShape& s, const std::vector<const TensorData*>&, float*, float* zeros) {
  round_zeros(zeros, s.groups * s.out_features, 0.f, static_cast<float>((1 << s.bits) - 1));
}

// scales [out, groups] float32, zeros [out, groups] uint8, from [groups][out].
void write_params(const AffineShape& s, const float* scales, const float* zeros,
                  const std::vector<const TensorData*>& tensors) {
  auto* sc = static_cast<float*>(const_cast<void*>(tensors[1]->data));
  auto* zr = static_cast<uint8_t*>(const_cast<void*>(tensors[2]->data));
  for (int64_t o = 0; o < s.out_features; ++o)
    for (int64_t g = 0; g < s.groups; ++g) {
      sc[o * s.groups + g] = scales[g * s.out_features + o];
      zr[o * s.groups + g] = static_cast<uint8_t>(zeros[g * s.out_features + o]);
    }
}

}  // namespace

const AffineFormat rtn_v1 = {
    kId,
    {{QFORGE_RTN_V1_QWEIGHT,
      {{kDLInt, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.out_features, words_for(s.in_features, s.bits)};
      },
      true},
     {QFORGE_RTN_V1_SCALES,
      {{kDLFloat, 32, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.out_features, s.groups};
      },
      true},
     {QFORGE_RTN_V1_ZEROS,
      {{kDLUInt, 8, 1}},
      [](const AffineShape& s) {
        return std::vector<int64_t>{s.out_features, s.groups};
      },
      true},
     {QFORGE_RTN_V1_BIAS,
      {{kDLFloat, 32, 1}},
      [](const AffineShape& s) { return std::vector<int64_t>{s.out_features}; },
      false}},
    &read_metadata,
    &describe,
    /*transformed=*/false,
    &round_params,
    &write_params,
};

}  // namespace qforge::kernels::formats
