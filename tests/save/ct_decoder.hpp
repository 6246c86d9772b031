// An independent decoder of compressed-tensors tensors, written from the
// format headers alone (no qforge codec or kernel): what a third-party
// loader would do. pack-quantized from <qforge/formats/ct_pack_quantized_v1.h>
// (bit by bit); int-/float-/naive-quantized from ct_naive_quantized_v1.h.
#pragma once

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace qforge::test::ct_decoder {

using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

// Reads the tensors of one linear exactly as ct_pack_quantized_v1.h describes
// them, bit by bit, without the codec.
struct Decoded {
  at::Tensor codes, scales, zeros, g_idx;  // int32 [N,K], float [groups,N] x2, int32 [K]
};

inline Decoded decode(const Tensors& tensors, const std::string& prefix, int b, bool sym, int64_t group_size,
               bool has_g_idx) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(name.rfind(prefix + ".", 0), 0u) << name;
    m[name.substr(prefix.size() + 1)] = t.contiguous();
  }
  const at::Tensor shape = m.at("weight_shape");
  EXPECT_EQ(shape.scalar_type(), at::kLong);
  const int64_t n = shape[0].item<int64_t>(), k = shape[1].item<int64_t>();
  const int64_t groups = group_size > 0 ? (k + group_size - 1) / group_size : 1;
  const at::Tensor packed = m.at("weight_packed");
  EXPECT_EQ(packed.scalar_type(), at::kInt);
  EXPECT_EQ(packed.sizes(), at::IntArrayRef({n, (k * b + 31) / 32}));
  const at::Tensor scale = m.at("weight_scale");
  EXPECT_EQ(scale.sizes(), at::IntArrayRef({n, groups}));
  // Bits [j*b, j*b+b) of a stream whose word w is word(w), one bit at a time.
  auto read = [b](const std::function<uint32_t(int64_t)>& word, int64_t j) {
    int32_t v = 0;
    for (int t = 0; t < b; ++t) {
      const int64_t s = j * b + t;
      v |= static_cast<int32_t>((word(s / 32) >> (s % 32)) & 1u) << t;
    }
    return v;
  };
  Decoded d;
  d.codes = at::empty({n, k}, at::kInt);
  const int32_t* pw = packed.data_ptr<int32_t>();
  int32_t* codes = d.codes.data_ptr<int32_t>();
  const int64_t words = packed.size(1);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j)
      codes[r * k + j] = read([&](int64_t w) { return static_cast<uint32_t>(pw[r * words + w]); }, j);
  d.scales = scale.to(at::kFloat).t().contiguous();
  d.zeros = at::full({groups, n}, static_cast<float>(1 << (b - 1)), at::kFloat);
  EXPECT_EQ(m.count("weight_zero_point"), sym ? 0u : 1u);
  if (!sym) {
    const at::Tensor zp = m.at("weight_zero_point");
    EXPECT_EQ(zp.scalar_type(), at::kInt);
    EXPECT_EQ(zp.sizes(), at::IntArrayRef({(n * b + 31) / 32, groups}));
    const int32_t* zw = zp.data_ptr<int32_t>();
    float* zeros = d.zeros.data_ptr<float>();
    for (int64_t g = 0; g < groups; ++g)  // column g of zp is the stream of the N zeros
      for (int64_t r = 0; r < n; ++r)
        zeros[g * n + r] = static_cast<float>(
            read([&](int64_t w) { return static_cast<uint32_t>(zw[w * groups + g]); }, r));
  }
  EXPECT_EQ(m.count("weight_g_idx"), has_g_idx ? 1u : 0u);
  if (has_g_idx) {
    d.g_idx = m.at("weight_g_idx");
    EXPECT_EQ(d.g_idx.scalar_type(), at::kInt);
  } else {
    d.g_idx = at::empty({k}, at::kInt);
    for (int64_t j = 0; j < k; ++j)
      d.g_idx.data_ptr<int32_t>()[j] = static_cast<int32_t>(group_size > 0 ? j / group_size : 0);
  }
  return d;
}


// W [N, K] float32: scale[g, r] * (code[r, j] - zero[g, r]), g = g_idx[j].
inline at::Tensor weight(const Decoded& d) {
  const at::Tensor g = d.g_idx.to(at::kLong);
  const at::Tensor s = d.scales.index_select(0, g).t();  // [N, K]
  const at::Tensor z = d.zeros.index_select(0, g).t();
  return s * (d.codes.to(at::kFloat) - z);
}

// An OCP FP8 E4M3FN byte: sign, 4 exponent bits e (bias 7), 3 mantissa bits
// m; sign * 2^(e-7) * (1 + m/8), subnormal (e = 0) sign * 2^-6 * m/8;
// 0x7F / 0xFF are NaN, nothing is infinite.
inline float e4m3(uint8_t byte) {
  const float sign = (byte & 0x80) ? -1.0f : 1.0f;
  const int e = (byte >> 3) & 0xF, m = byte & 0x7;
  if (e == 0xF && m == 0x7) return NAN;
  if (e == 0) return sign * std::ldexp(static_cast<float>(m) / 8.0f, -6);
  return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

// W [N, K] float32 of a linear stored unpacked (int-/float-/naive-quantized,
// ct_naive_quantized_v1.h): W[r, j] = s * q[r, j] (int8 weight) or
// s * e4m3(weight[r, j]) (FP8 bytes), s = weight_scale[r] ([N, 1]) or
// weight_scale[0] ([1]), products in float32.
inline at::Tensor decode_naive(const Tensors& tensors, const std::string& prefix, bool fp8) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : tensors) {
    EXPECT_EQ(name.rfind(prefix + ".", 0), 0u) << name;
    m[name.substr(prefix.size() + 1)] = t.contiguous();
  }
  const at::Tensor w = m.at("weight");
  EXPECT_EQ(w.scalar_type(), fp8 ? at::kByte : at::kChar);
  EXPECT_EQ(w.dim(), 2);
  const int64_t n = w.size(0), k = w.size(1);
  const at::Tensor scale = m.at("weight_scale").to(at::kFloat).contiguous();
  const bool per_row = scale.sizes() == at::IntArrayRef({n, 1});
  EXPECT_TRUE(per_row || scale.sizes() == at::IntArrayRef({1})) << scale.sizes();
  at::Tensor out = at::empty({n, k}, at::kFloat);
  float* o = out.data_ptr<float>();
  const float* s = scale.data_ptr<float>();
  for (int64_t r = 0; r < n; ++r)
    for (int64_t j = 0; j < k; ++j) {
      const float q = fp8 ? e4m3(w.data_ptr<uint8_t>()[r * k + j])
                          : static_cast<float>(w.data_ptr<int8_t>()[r * k + j]);
      o[r * k + j] = s[per_row ? r : 0] * q;
    }
  return out;
}

}  // namespace qforge::test::ct_decoder
