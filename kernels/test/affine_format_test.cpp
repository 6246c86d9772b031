// The affine format table (qforge_kernels/affine_format.hpp, affine_aten.hpp):
// lookup; for every row, tensors packed here by hand from known codes,
// scales, zero points and groups read back by unpack_affine exactly, decoded
// by dequantize_reference as the format's formula says and by PackedMatrix
// bit for bit the same; and what a row must refuse.
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include <gtest/gtest.h>
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/gptq_v1.h>
#include <qforge/formats/quip_v1.h>
#include <qforge/formats/rtn_v1.h>

#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

namespace qk = qforge::kernels;

TEST(AffineFormats, Lookup) {
  ASSERT_NE(qk::find_affine_format(QFORGE_FORMAT_RTN_V1), nullptr);
  ASSERT_NE(qk::find_affine_format(QFORGE_FORMAT_GPTQ_V1), nullptr);
  EXPECT_STREQ(qk::find_affine_format(QFORGE_FORMAT_GPTQ_V1)->id, QFORGE_FORMAT_GPTQ_V1);
  EXPECT_EQ(qk::find_affine_format("org.qforge.gptq/2"), nullptr);
  EXPECT_EQ(qk::find_affine_format(nullptr), nullptr);
  const char* const* ids = qk::affine_format_ids();
  size_t n = 0;
  while (ids[n] != nullptr) {
    EXPECT_EQ(qk::find_affine_format(ids[n]), qk::affine_formats()[n]);
    ++n;
  }
  EXPECT_EQ(n, qk::affine_formats().size());
}

// A weight with known parts: W[o, i] = scales[g, o] (codes[o, i] − zeros[g, o]).
struct Known {
  int bits;
  int64_t out, in, group_size, groups;
  at::Tensor codes, scales, zeros, g_idx;  // int32 [out, in], float [groups, out] x2, int32 [in]

  Known(int bits_, int64_t out_, int64_t in_, int64_t group_size_, bool shuffled, uint32_t seed)
      : bits(bits_),
        out(out_),
        in(in_),
        group_size(group_size_),
        groups((in_ + group_size_ - 1) / group_size_) {
    at::manual_seed(seed);
    const int64_t maxq = (int64_t{1} << bits) - 1;
    codes = at::randint(0, maxq + 1, {out, in}, at::kInt);
    scales = at::rand({groups, out}).add_(0.01).to(at::kHalf).to(at::kFloat);  // float16 values
    zeros = at::randint(1, maxq + 1, {groups, out}, at::kFloat);
    g_idx = at::arange(in, at::kInt).div_(group_size, "floor");
    if (shuffled) g_idx = g_idx.index_select(0, at::randperm(in)).contiguous();
  }

  float w(int64_t o, int64_t i) const {
    const int64_t g = g_idx[i].item<int32_t>();
    return scales[g][o].item<float>() *
           (static_cast<float>(codes[o][i].item<int32_t>()) - zeros[g][o].item<float>());
  }
};

// Each row of `codes` [rows, n] (uint8 values) as one bit stream: int32 [rows, words(n)].
at::Tensor pack_rows(const at::Tensor& codes, int bits) {
  const at::Tensor c = codes.to(at::kByte).contiguous();
  const int64_t rows = c.size(0), n = c.size(1), words = qk::words_for(n, bits);
  at::Tensor packed = at::empty({rows, words}, at::kInt);
  for (int64_t r = 0; r < rows; ++r)
    qk::pack_bits(c.data_ptr<uint8_t>() + r * n, n, bits,
                  reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>()) + r * words);
  return packed;
}

std::map<std::string, at::Tensor> rtn_tensors(const Known& k) {
  return {{QFORGE_RTN_V1_QWEIGHT, pack_rows(k.codes, k.bits)},
          {QFORGE_RTN_V1_SCALES, k.scales.t().contiguous()},
          {QFORGE_RTN_V1_ZEROS, k.zeros.t().to(at::kByte).contiguous()}};
}

std::string rtn_metadata(const Known& k) {
  return R"({"bits":)" + std::to_string(k.bits) + R"(,"group_size":)" +
         std::to_string(k.group_size) + R"(,"sym":false,"in_features":)" + std::to_string(k.in) +
         R"(,"out_features":)" + std::to_string(k.out) + "}";
}

std::map<std::string, at::Tensor> gptq_tensors(const Known& k) {
  return {{QFORGE_GPTQ_V1_QWEIGHT, pack_rows(k.codes, k.bits).t().contiguous()},
          {QFORGE_GPTQ_V1_QZEROS, pack_rows(k.zeros - QFORGE_GPTQ_V1_ZERO_OFFSET, k.bits)},
          {QFORGE_GPTQ_V1_SCALES, k.scales.to(at::kHalf)},
          {QFORGE_GPTQ_V1_G_IDX, k.g_idx}};
}

std::string gptq_metadata(const Known& k) {
  return R"({"bits":)" + std::to_string(k.bits) + R"(,"group_size":)" +
         std::to_string(k.group_size) + R"(,"in_features":)" + std::to_string(k.in) +
         R"(,"out_features":)" + std::to_string(k.out) + R"(,"checkpoint_format":"gptq"})";
}

void expect_reads_back(const Known& k, const std::string& format, const std::string& metadata,
                       const std::map<std::string, at::Tensor>& tensors) {
  const qk::AffineTensors a = qk::unpack_affine(format, metadata, tensors);
  EXPECT_EQ(a.bits, k.bits);
  EXPECT_EQ(a.out_features, k.out);
  EXPECT_EQ(a.in_features, k.in);
  EXPECT_EQ(a.group_size, k.group_size);
  EXPECT_EQ(a.groups, k.groups);
  EXPECT_TRUE(at::equal(a.codes, k.codes));
  EXPECT_TRUE(at::equal(a.scales, k.scales));
  EXPECT_TRUE(at::equal(a.zeros, k.zeros));
  EXPECT_TRUE(at::equal(a.g_idx, k.g_idx));
  EXPECT_FALSE(a.bias.defined());

  const qk::AffineInput in = qk::describe_affine(
      *qk::find_affine_format(format.c_str()), metadata,
      std::vector<std::pair<std::string, at::Tensor>>(tensors.begin(), tensors.end()));
  std::vector<float> ref(static_cast<size_t>(k.out * k.in));
  qk::dequantize_reference(in.weight.weight, ref.data());
  int64_t bad = 0;
  for (int64_t o = 0; o < k.out; ++o)
    for (int64_t i = 0; i < k.in; ++i) bad += ref[o * k.in + i] != k.w(o, i);
  EXPECT_EQ(bad, 0) << "dequantize_reference != the format's formula";
  const qk::PackedMatrix m(in.weight.weight);
  std::vector<float> packed(ref.size());
  m.dequantize_rows(0, m.tiles(), packed.data(), k.in);
  EXPECT_EQ(packed, ref) << "PackedMatrix::dequantize_rows != dequantize_reference";
}

TEST(AffineFormats, EveryRowReadsItsFormatBack) {
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t group_size : {16, 100, 75}) {  // 75 = in: one group per row
      SCOPED_TRACE("bits=" + std::to_string(bits) + " group_size=" + std::to_string(group_size));
      const Known k(bits, 37, 75, group_size, /*shuffled=*/false, 1);
      expect_reads_back(k, QFORGE_FORMAT_RTN_V1, rtn_metadata(k), rtn_tensors(k));
      expect_reads_back(k, QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), gptq_tensors(k));
      const Known act_order(bits, 37, 75, group_size, /*shuffled=*/true, 2);
      expect_reads_back(act_order, QFORGE_FORMAT_GPTQ_V1, gptq_metadata(act_order),
                        gptq_tensors(act_order));
      EXPECT_TRUE(qk::unpack_affine(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), gptq_tensors(k))
                      .sequential_groups());
      if (k.groups > 1) {
        EXPECT_FALSE(qk::unpack_affine(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(act_order),
                                       gptq_tensors(act_order))
                         .sequential_groups());
      }
    }
  }
}

TEST(AffineFormats, BiasIsFloat32WhateverTheFormatStores) {
  const Known k(4, 16, 64, 32, false, 3);
  const at::Tensor bias = at::randn({16}).to(at::kHalf).to(at::kFloat);
  for (at::ScalarType type : {at::kFloat, at::kHalf, at::kBFloat16}) {
    auto tensors = gptq_tensors(k);
    tensors[QFORGE_GPTQ_V1_BIAS] = bias.to(type);
    const qk::AffineTensors a = qk::unpack_affine(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), tensors);
    ASSERT_TRUE(a.bias.defined());
    EXPECT_TRUE(at::equal(a.bias, bias.to(type).to(at::kFloat))) << at::toString(type);
  }
}

TEST(AffineFormats, RefusesWhatTheFormatCannotHold) {
  const Known k(3, 16, 64, 32, false, 4);
  auto expect_invalid = [](const std::string& format, const std::string& metadata,
                           const std::map<std::string, at::Tensor>& tensors,
                           const std::string& what) {
    try {
      qk::unpack_affine(format, metadata, tensors);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const qforge::Error& e) {
      EXPECT_EQ(e.code(), QFORGE_STATUS_INVALID_ARGUMENT) << what << ": " << e.what();
      EXPECT_EQ(std::string(e.what()).rfind(format, 0), 0u) << "message starts with the id";
    }
  };
  auto rtn = rtn_tensors(k);
  rtn[QFORGE_RTN_V1_ZEROS] = at::full({16, 2}, 8, at::kByte);
  expect_invalid(QFORGE_FORMAT_RTN_V1, rtn_metadata(k), rtn, "zero above maxq");
  auto gptq = gptq_tensors(k);
  gptq[QFORGE_GPTQ_V1_G_IDX] = at::full({64}, 2, at::kInt);
  expect_invalid(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), gptq, "g_idx past the groups");
  gptq = gptq_tensors(k);
  gptq["qweight.extra"] = at::zeros({1});
  expect_invalid(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), gptq, "unknown tensor");
  gptq = gptq_tensors(k);
  gptq.erase(QFORGE_GPTQ_V1_G_IDX);
  expect_invalid(QFORGE_FORMAT_GPTQ_V1, gptq_metadata(k), gptq, "g_idx missing");
  expect_invalid(QFORGE_FORMAT_GPTQ_V1, R"({"bits":3})", gptq_tensors(k), "group_size missing");
  try {
    qk::unpack_affine("org.example.other/1", "{}", {});
    ADD_FAILURE() << "unknown format accepted";
  } catch (const qforge::Error& e) {
    EXPECT_EQ(e.code(), QFORGE_STATUS_UNSUPPORTED);
  }
}

// org.qforge.quip/1: Q̂ decodes as the grid formula, the transforms are
// attached (V: a 64-point Hadamard transform, U: none), a plain affine
// unpacker refuses the row, and what the metadata or tensors get wrong is
// refused naming the format.
std::map<std::string, at::Tensor> quip_tensors(const Known& k) {
  return {{QFORGE_QUIP_V1_QWEIGHT, pack_rows(k.codes, k.bits)},
          {QFORGE_QUIP_V1_SCALES, k.scales.t().to(at::kHalf).contiguous()},
          {QFORGE_QUIP_V1_ZEROS, k.zeros.t().to(at::kByte).contiguous()},
          {QFORGE_QUIP_V1_RESCALE, (at::rand({k.in}) + 0.5).to(at::kHalf)},
          {QFORGE_QUIP_V1_SIGN_V, at::randint(0, 2, {k.in}, at::kChar).mul_(2).sub_(1)}};
}

std::string quip_metadata(const Known& k, const std::string& v = R"("v_pow2":64,"v_base":1,"v_base_kind":"hadamard")",
                          const std::string& u = R"("u_base_kind":"none")") {
  return R"({"bits":)" + std::to_string(k.bits) + R"(,"group_size":)" + std::to_string(k.group_size) +
         R"(,"in_features":)" + std::to_string(k.in) + R"(,"out_features":)" + std::to_string(k.out) +
         "," + v + "," + u + "}";
}

TEST(AffineFormats, QuipRowHoldsItsGridBetweenTransforms) {
  const Known k(2, 16, 64, 32, false, 5);
  const qk::AffineFormat* row = qk::find_affine_format(QFORGE_FORMAT_QUIP_V1);
  ASSERT_NE(row, nullptr);
  EXPECT_TRUE(row->transformed);
  const auto tensors = quip_tensors(k);
  const qk::AffineInput in = qk::describe_affine(
      *row, quip_metadata(k), std::vector<std::pair<std::string, at::Tensor>>(tensors.begin(), tensors.end()));
  EXPECT_TRUE(in.weight.transformed());
  ASSERT_TRUE(in.weight.input_transform);
  EXPECT_EQ(in.weight.input_transform->size(), 64);
  EXPECT_FALSE(in.weight.output_transform);
  EXPECT_EQ(in.weight.rescale.size(), 64u);
  std::vector<float> ref(static_cast<size_t>(k.out * k.in));
  qk::dequantize_reference(in.weight.weight, ref.data());
  for (int64_t o = 0; o < k.out; ++o)
    for (int64_t i = 0; i < k.in; ++i) ASSERT_EQ(ref[o * k.in + i], k.w(o, i));
  try {
    qk::unpack_affine(QFORGE_FORMAT_QUIP_V1, quip_metadata(k), tensors);
    ADD_FAILURE() << "a plain affine unpacker accepted a transformed row";
  } catch (const qforge::Error& e) {
    EXPECT_EQ(e.code(), QFORGE_STATUS_UNSUPPORTED);
  }
  auto refused = [&](const std::string& metadata, const std::map<std::string, at::Tensor>& t,
                     const char* what) {
    try {
      qk::describe_affine(*row, metadata, std::vector<std::pair<std::string, at::Tensor>>(t.begin(), t.end()));
      ADD_FAILURE() << "accepted: " << what;
    } catch (const qforge::Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(QFORGE_FORMAT_QUIP_V1, 0), 0u) << what << ": " << e.what();
    }
  };
  refused(quip_metadata(k, R"("v_pow2":32,"v_base":1,"v_base_kind":"hadamard")"), tensors, "2^a·r != in");
  refused(quip_metadata(k, R"("v_pow2":1,"v_base":64,"v_base_kind":"orthogonal")"), tensors, "stored base missing");
  refused(quip_metadata(k, R"("v_pow2":64,"v_base":1,"v_base_kind":"none")"), tensors, "V none");
  refused(quip_metadata(k, R"("v_pow2":64,"v_base":1,"v_base_kind":"random")"), tensors, "random without a seed");
  const Known odd(2, 16, 172, 43, false, 6);  // 172 = 4·43: no Hadamard matrix of order 43
  refused(quip_metadata(odd, R"("v_pow2":4,"v_base":43,"v_base_kind":"hadamard")"), quip_tensors(odd),
          "no built-in Hadamard order 43");
  auto t = tensors;
  t[QFORGE_QUIP_V1_SIGN_V] = at::zeros({64}, at::kChar);
  refused(quip_metadata(k), t, "signs not ±1");
  t = tensors;
  t[QFORGE_QUIP_V1_RESCALE] = at::zeros({64}, at::kHalf);
  refused(quip_metadata(k), t, "rescale 0");
  t = tensors;
  t[QFORGE_QUIP_V1_SIGN_U] = at::ones({16}, at::kChar);
  refused(quip_metadata(k), t, "sign_u for U none");
}

}  // namespace
