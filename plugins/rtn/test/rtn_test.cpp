// Tests of the qforge-rtn quantizer (org.qforge.rtn), loaded through the host
// registry exactly as the CLI loads it: the grid against a brute-force
// reference, ties, defaults and bad input. Its layers run in
// org.qforge.affine.layer (plugins/affine/test).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge_host/base/errors.hpp>
#include <qforge_kernels/bitpack.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "support/plugins.hpp"

namespace {

using qforge::host::PluginError;
using qforge::host::QuantResult;
using qforge::kernels::unpack_bits;
using qforge::kernels::words_for;
using qforge::test::gaussian;
using qforge::test::Settings;

class Rtn : public ::testing::Test {
 protected:
  void SetUp() override {
    quantizer_ = qforge::test::plugin_registry().find("org.qforge.rtn");
    ASSERT_NE(quantizer_, nullptr) << "org.qforge.rtn not found" << qforge::test::plugin_refusals();
  }

  QuantResult quantize(const at::Tensor& w, const at::Tensor& bias,
                       const Settings& settings) const {
    return qforge::test::quantize(*quantizer_, w, at::Tensor(), settings, bias);
  }

  const qforge::host::Component* quantizer_ = nullptr;
};

// Unpacks qweight [out, words] into integer codes [out, in].
std::vector<uint8_t> unpack_qweight(const at::Tensor& qweight, int64_t out, int64_t in,
                                    int bits) {
  at::Tensor q = qweight.contiguous();
  std::vector<uint8_t> codes(out * in);
  const auto* words = reinterpret_cast<const uint32_t*>(q.data_ptr<int32_t>());
  for (int64_t r = 0; r < out; ++r)
    unpack_bits(words + r * q.size(1), in, bits, codes.data() + r * in);
  return codes;
}

TEST_F(Rtn, Describes) {
  const qforge_component_desc& d = *quantizer_->desc;
  EXPECT_EQ(d.kind, QFORGE_COMPONENT_QUANTIZER);
  ASSERT_EQ(d.param_count, 3u);
  EXPECT_STREQ(d.params[0]->name, "bits");
  EXPECT_STREQ(d.params[0]->default_value, "4");
  EXPECT_EQ(d.params[0]->min, 2);
  EXPECT_EQ(d.params[0]->max, 8);
  EXPECT_STREQ(d.params[1]->name, "group_size");
  EXPECT_STREQ(d.params[1]->default_value, "128");
  EXPECT_EQ(d.params[1]->min, -1);
  EXPECT_STREQ(d.params[2]->name, "sym");
  EXPECT_EQ(d.params[2]->type, QFORGE_PARAM_BOOL);
  EXPECT_STREQ(d.params[2]->default_value, "true");
  ASSERT_NE(quantizer_->quantizer(), nullptr);
  EXPECT_STREQ(quantizer_->quantizer()->output_formats[0], "org.qforge.rtn/1");
}

// The brute-force reference: scale/zero per group exactly as the GPTQ
// reference quantizer, in float32; each code by exhaustive search for the
// grid point nearest to w/scale (ties to the even offset from zero, which is
// torch.round's half-to-even).
TEST_F(Rtn, MatchesBruteForceReference) {
  const int64_t out = 64, in = 300;
  at::Tensor w = gaussian({out, in}, 42);
  {
    auto a = w.accessor<float, 2>();
    for (int64_t j = 0; j < in; ++j) a[0][j] = 0.f;                 // all-zero row
    for (int64_t j = 0; j < in; ++j) a[1][j] = std::fabs(a[1][j]);  // non-negative row
    // Exact ties for 4 bits (scale 1, zero 8): every group holds -7.5 and 7.5.
    const float pattern[] = {-7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 3.5f, 7.5f};
    for (int64_t j = 0; j < in; ++j) a[2][j] = pattern[j % 8];
    for (int64_t j = 0; j < in; ++j) a[3][j] = 1e-3f * a[3][j];     // small range
  }

  for (int bits = 2; bits <= 8; ++bits) {
    for (bool sym : {true, false}) {
      for (int64_t gs : {int64_t{128}, int64_t{-1}, int64_t{7}, int64_t{300}, int64_t{512}}) {
        SCOPED_TRACE("bits=" + std::to_string(bits) + " sym=" + std::to_string(sym) +
                     " group_size=" + std::to_string(gs));
        QuantResult r = quantize(w, at::Tensor(), {{"bits", std::to_string(bits)},
                                                   {"group_size", std::to_string(gs)},
                                                   {"sym", sym ? "true" : "false"}});
        ASSERT_EQ(r.format, "org.qforge.rtn/1");
        const auto meta = nlohmann::json::parse(r.metadata);
        const int64_t g_eff = gs == -1 ? in : gs;
        EXPECT_EQ(meta.at("bits").get<int>(), bits);
        EXPECT_EQ(meta.at("group_size").get<int64_t>(), g_eff);
        EXPECT_EQ(meta.at("sym").get<bool>(), sym);
        EXPECT_EQ(meta.at("in_features").get<int64_t>(), in);
        EXPECT_EQ(meta.at("out_features").get<int64_t>(), out);
        const int64_t groups = (in + g_eff - 1) / g_eff;

        ASSERT_EQ(r.tensors.count("bias"), 0u);
        const at::Tensor qweight = r.tensors.at("qweight");
        const at::Tensor scales = r.tensors.at("scales").contiguous();
        const at::Tensor zeros = r.tensors.at("zeros").contiguous();
        ASSERT_EQ(qweight.scalar_type(), at::kInt);
        ASSERT_EQ(qweight.sizes(), (std::vector<int64_t>{out, words_for(in, bits)}));
        ASSERT_EQ(scales.scalar_type(), at::kFloat);
        ASSERT_EQ(scales.sizes(), (std::vector<int64_t>{out, groups}));
        ASSERT_EQ(zeros.scalar_type(), at::kByte);
        ASSERT_EQ(zeros.sizes(), (std::vector<int64_t>{out, groups}));
        const at::Tensor deq = r.dequantized.contiguous();
        ASSERT_EQ(deq.sizes(), w.sizes());

        const std::vector<uint8_t> codes = unpack_qweight(qweight, out, in, bits);
        const float maxq = static_cast<float>((1 << bits) - 1);
        auto wa = w.accessor<float, 2>();
        auto da = deq.accessor<float, 2>();
        auto sa = scales.accessor<float, 2>();
        auto za = zeros.accessor<uint8_t, 2>();
        int64_t mismatches = 0, checked = 0;
        for (int64_t r0 = 0; r0 < out; ++r0) {
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t j0 = g * g_eff, j1 = std::min(in, j0 + g_eff);
            float xmin = 0.f, xmax = 0.f;
            for (int64_t j = j0; j < j1; ++j) {
              xmin = std::min(xmin, wa[r0][j]);
              xmax = std::max(xmax, wa[r0][j]);
            }
            const bool clipped_sym = sym && xmin == 0.f && xmax > 0.f;  // GPTQ quirk
            if (sym) {
              xmax = std::max(std::fabs(xmin), xmax);
              if (xmin < 0.f) xmin = -xmax;
            }
            if (xmin == 0.f && xmax == 0.f) {
              xmin = -1.f;
              xmax = 1.f;
            }
            const float scale = (xmax - xmin) / maxq;
            const float zero = sym ? (maxq + 1.f) / 2.f : std::nearbyint(-xmin / scale);
            ASSERT_EQ(sa[r0][g], scale) << "row " << r0 << " group " << g;
            ASSERT_EQ(static_cast<float>(za[r0][g]), zero) << "row " << r0 << " group " << g;

            for (int64_t j = j0; j < j1; ++j) {
              const float v = wa[r0][j] / scale;
              int best = -1;
              double best_d = 0;
              for (int q = 0; q <= static_cast<int>(maxq); ++q) {
                const double off = q - static_cast<double>(zero);
                const double d = std::fabs(static_cast<double>(v) - off);
                const bool even = std::fmod(std::fabs(off), 2.0) == 0.0;
                if (best < 0 || d < best_d || (d == best_d && even)) {
                  best = q;
                  best_d = d;
                }
              }
              const uint8_t got = codes[r0 * in + j];
              if (got != best && ++mismatches <= 5)
                ADD_FAILURE() << "code mismatch at [" << r0 << ", " << j << "]: w=" << wa[r0][j]
                              << " scale=" << scale << " zero=" << zero << " plugin=" << int(got)
                              << " reference=" << best;
              // The dequantized weight is scale * (q - zero), bit for bit.
              const float expect = scale * (static_cast<float>(got) - zero);
              if (da[r0][j] != expect && ++mismatches <= 5)
                ADD_FAILURE() << "dequantized [" << r0 << ", " << j << "] = " << da[r0][j]
                              << ", scale*(q-zero) = " << expect;
              if (!clipped_sym) {
                // Round-to-nearest error: at most half a step (plus float32
                // rounding of w/scale and of the product, relative to |w|).
                const double err = std::fabs(static_cast<double>(wa[r0][j]) - da[r0][j]);
                const double bound =
                    0.5 * scale * (1 + 1e-5) + std::ldexp(std::fabs(wa[r0][j]), -22);
                if (err > bound && ++mismatches <= 5)
                  ADD_FAILURE() << "error " << err << " > " << bound << " at [" << r0 << ", "
                                << j << "]";
                ++checked;
              }
            }
          }
        }
        EXPECT_EQ(mismatches, 0);
        EXPECT_GT(checked, 0);
        ASSERT_EQ(r.metrics.count("max_abs_error"), 1u);
        EXPECT_FLOAT_EQ(r.metrics.at("max_abs_error"),
                        (deq - w).abs().max().item<float>());
      }
    }
  }
}

TEST_F(Rtn, TiesRoundHalfToEven) {
  // One 4-bit symmetric group: xmax = 7.5, scale = 1, zero = 8; w/scale ties
  // at .5 go to the even integer as torch.round does.
  at::Tensor w = at::tensor({-7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 7.5f, 0.f}).reshape({1, 8});
  QuantResult r = quantize(w, at::Tensor(), {{"bits", "4"}, {"group_size", "-1"}});
  const auto codes = unpack_qweight(r.tensors.at("qweight"), 1, 8, 4);
  // round(v) + 8, clamped to [0, 15]: -8, 0, 2, 2, -0, -2, 8 (clamped to 15), 0
  const std::vector<uint8_t> expect = {0, 8, 10, 10, 8, 6, 15, 8};
  EXPECT_EQ(codes, expect);
  EXPECT_EQ(r.tensors.at("scales").item<float>(), 1.f);
  EXPECT_EQ(r.tensors.at("zeros").item<uint8_t>(), 8);
}

TEST_F(Rtn, GroupSizeZeroIsRejected) {
  const at::Tensor w = gaussian({4, 32}, 5);
  try {
    quantize(w, at::Tensor(), {{"group_size", "0"}});
    FAIL() << "group_size 0 accepted";
  } catch (const PluginError& e) {
    EXPECT_EQ(e.code(), QFORGE_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("group_size"), std::string::npos) << e.what();
  }
}

TEST_F(Rtn, RejectsBadWeights) {
  at::Tensor w = gaussian({4, 32}, 6);
  w[1][3] = std::nanf("");
  EXPECT_THROW(quantize(w, at::Tensor(), {}), PluginError);
  w[1][3] = INFINITY;
  EXPECT_THROW(quantize(w, at::Tensor(), {}), PluginError);
  w[1][3] = -INFINITY;
  EXPECT_THROW(quantize(w, at::Tensor(), {{"sym", "false"}}), PluginError);
  EXPECT_THROW(quantize(gaussian({4, 32}, 6), at::zeros({5}), {}), PluginError);
}

TEST_F(Rtn, DefaultsAreFourBitSymmetricGroup128) {
  const at::Tensor w = gaussian({8, 256}, 9);
  QuantResult r = quantize(w, at::Tensor(), {});
  const auto meta = nlohmann::json::parse(r.metadata);
  EXPECT_EQ(meta.at("bits").get<int>(), 4);
  EXPECT_EQ(meta.at("group_size").get<int>(), 128);
  EXPECT_TRUE(meta.at("sym").get<bool>());
  EXPECT_EQ(r.tensors.at("qweight").sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_TRUE(at::all(r.tensors.at("zeros") == 8).item<bool>());
  // 4-bit RTN of a Gaussian: error well under the weights' scale.
  const double rel = (r.dequantized - w).norm().item<double>() / w.norm().item<double>();
  EXPECT_LT(rel, 0.15);
  EXPECT_GT(rel, 0.0);
}

}  // namespace
