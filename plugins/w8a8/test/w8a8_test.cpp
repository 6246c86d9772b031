// Tests of qforge-w8a8 through the host registry, as the pipeline and the
// loaders call it: org.qforge.w8a8 (INT8 RTN / GPTQ), org.qforge.fp8 and the
// inference layer org.qforge.w8a8.layer against
// qforge/formats/ct_naive_quantized_v1.h, written out again here.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge_host/base/errors.hpp>
#include <qforge_kernels/fp8.hpp>

#include <cmath>
#include <string>

#include "support/plugins.hpp"

namespace {

namespace qh = qforge::host;
using nlohmann::json;
using qforge::test::gaussian;
using qforge::test::Settings;

const qh::Component& component(const char* id) {
  const qh::Component* c = qforge::test::plugin_registry().find(id);
  if (c == nullptr) throw std::runtime_error(std::string(id) + " not loaded" + qforge::test::plugin_refusals());
  return *c;
}

// One layer through quantizer `id` with the pipeline's inputs.
qh::QuantResult quantize(const char* id, const at::Tensor& w, const Settings& s,
                         const at::Tensor& act_absmax = {}, const at::Tensor& h = {},
                         const at::Tensor& bias = {}) {
  const qh::Component& c = component(id);
  qh::ParamValues params(id, c.desc->params, c.desc->param_count, s);
  qh::QuantizeRequest req;
  req.layer_name = "test.layer";
  req.weight = w;
  req.bias = bias;
  req.hessian = h;
  req.nsamples = h.defined() ? 1 : 0;
  req.act_absmax = act_absmax;
  return qh::quantize_layer(c, req, params);
}

float half(float x) { return at::tensor(x).to(at::kHalf).to(at::kFloat).item<float>(); }

// Weights with an outlier column, and a bias.
at::Tensor weights(int64_t out, int64_t in, uint32_t seed) {
  at::Tensor w = gaussian({out, in}, seed) * 0.05;
  w.select(1, 3).mul_(20);
  return w;
}

TEST(Int8, RoundToNearestIsCompressedTensorsSymmetricGrid) {
  const at::Tensor w = weights(24, 40, 1), b = gaussian({24}, 2);
  const qh::QuantResult r = quantize("org.qforge.w8a8", w, {}, {}, {}, b);
  EXPECT_EQ(r.format, QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1);
  const json m = json::parse(r.metadata);
  EXPECT_EQ(m["weights"], json({{"num_bits", 8}, {"type", "int"}, {"symmetric", true}, {"strategy", "channel"}}));
  EXPECT_EQ(m["input_activations"], json({{"num_bits", 8}, {"type", "int"}, {"symmetric", true},
                                          {"strategy", "token"}, {"dynamic", true}}));
  const at::Tensor q = r.tensors.at("weight"), s = r.tensors.at("weight_scale");
  ASSERT_EQ(q.scalar_type(), at::kChar);
  ASSERT_EQ(s.sizes(), at::IntArrayRef({24, 1}));
  EXPECT_FALSE(r.tensors.count("input_scale"));
  EXPECT_TRUE(at::equal(r.tensors.at("bias"), b));
  for (int64_t o = 0; o < 24; ++o) {
    // s = max|w| / 127.5 in float16 (calculate_qparams), q = clamp(round(w / s), -128, 127).
    const float scale = half(w[o].abs().max().item<float>() / 127.5f);
    EXPECT_EQ(s[o][0].item<float>(), scale) << o;
    for (int64_t j = 0; j < 40; ++j) {
      const float want = std::min(127.f, std::max(-128.f, std::nearbyint(w[o][j].item<float>() / scale)));
      ASSERT_EQ(q[o][j].item<int8_t>(), static_cast<int8_t>(want)) << o << "," << j;
    }
  }
  EXPECT_TRUE(at::equal(r.dequantized, q.to(at::kFloat) * s));
}

TEST(Int8, PerTensorAndStaticInputScale) {
  const at::Tensor w = weights(8, 16, 3);
  const at::Tensor absmax = at::rand({16}) * 3 + 0.5;
  const qh::QuantResult r = quantize("org.qforge.w8a8", w,
                                     {{"weight_strategy", "tensor"}, {"activations", "static"}}, absmax);
  ASSERT_EQ(r.tensors.at("weight_scale").sizes(), at::IntArrayRef({1}));
  EXPECT_EQ(r.tensors.at("weight_scale").item<float>(), half(w.abs().max().item<float>() / 127.5f));
  EXPECT_EQ(r.tensors.at("input_scale").item<float>(), half(absmax.max().item<float>() / 127.f));
  const json a = json::parse(r.metadata)["input_activations"];
  EXPECT_EQ(a["strategy"], "tensor");
  EXPECT_EQ(a["dynamic"], false);
  try {
    quantize("org.qforge.w8a8", w, {{"activations", "static"}});
    FAIL() << "static activations without calibration statistics must be refused";
  } catch (const qh::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("--calib"), std::string::npos) << e.what();
  }
}

// tr((W − Q) H (W − Q)ᵀ): the output error GPTQ minimises.
double hessian_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  const at::Tensor d = (w - q).to(at::kDouble);
  return d.mm(h.to(at::kDouble)).mul(d).sum().item<double>();
}

TEST(Int8, GptqOnTheSameGridBeatsRoundToNearestOnOutputError) {
  const at::Tensor w = weights(32, 64, 4), h = qforge::test::synthetic_hessian(64, 5);
  const qh::QuantResult rtn = quantize("org.qforge.w8a8", w, {}, {}, h);
  const qh::QuantResult gptq = quantize("org.qforge.w8a8", w, {{"weights", "gptq"}}, {}, h);
  const at::Tensor q = gptq.tensors.at("weight"), s = gptq.tensors.at("weight_scale");
  EXPECT_TRUE(at::equal(gptq.dequantized, q.to(at::kFloat) * s));
  EXPECT_TRUE(at::equal(s, rtn.tensors.at("weight_scale")));  // the same grid
  EXPECT_LT(hessian_error(w, gptq.dequantized, h), 0.8 * hessian_error(w, rtn.dequantized, h));
  EXPECT_THROW(quantize("org.qforge.w8a8", w, {{"weights", "gptq"}}), qh::PluginError);  // no H
}

TEST(Fp8, GptqAmongTheE4m3ValuesBeatsRoundToNearestOnOutputError) {
  const at::Tensor w = weights(32, 64, 15), h = qforge::test::synthetic_hessian(64, 16);
  const qh::QuantResult rtn = quantize("org.qforge.fp8", w, {}, {}, h);
  const qh::QuantResult gptq = quantize("org.qforge.fp8", w, {{"weights", "gptq"}}, {}, h);
  const at::Tensor c = gptq.tensors.at("weight"), s = gptq.tensors.at("weight_scale");
  ASSERT_EQ(c.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(s, rtn.tensors.at("weight_scale")));  // the same scales
  for (int64_t k = 0; k < c.numel(); ++k)  // W = s · e4m3(code), every code finite
    ASSERT_EQ(gptq.dequantized.view(-1)[k].item<float>(),
              s[k / 64][0].item<float>() *
                  qforge::kernels::fp8_e4m3_to_float(c.view(-1)[k].item<uint8_t>()));
  EXPECT_LT(hessian_error(w, gptq.dequantized, h), 0.8 * hessian_error(w, rtn.dequantized, h));
}

TEST(Fp8, WeightsAreTheNearestE4m3OfWOverScale) {
  const at::Tensor w = weights(16, 48, 6);
  for (const char* strategy : {"channel", "tensor"}) {
    const qh::QuantResult r = quantize("org.qforge.fp8", w, {{"weight_strategy", strategy}});
    const at::Tensor c = r.tensors.at("weight"), s = r.tensors.at("weight_scale");
    ASSERT_EQ(c.scalar_type(), at::kByte);
    EXPECT_EQ(json::parse(r.metadata)["weights"]["type"], "float");
    for (int64_t o = 0; o < 16; ++o) {
      const float scale = s.numel() == 1 ? s.item<float>() : s[o][0].item<float>();
      const float absmax = (s.numel() == 1 ? w : w[o]).abs().max().item<float>();
      EXPECT_EQ(scale, half(absmax / 448.f));
      for (int64_t j = 0; j < 48; ++j) {
        const float x = w[o][j].item<float>() / scale;
        const float got = qforge::kernels::fp8_e4m3_to_float(c[o][j].item<uint8_t>());
        // No other finite e4m3 value is nearer (saturating at 448).
        const float clamped = std::min(448.f, std::max(-448.f, x));
        for (int k = 0; k < 256; ++k) {
          const float v = qforge::kernels::fp8_e4m3_to_float(static_cast<uint8_t>(k));
          if (!std::isfinite(v)) continue;
          ASSERT_LE(std::fabs(clamped - got), std::fabs(clamped - v)) << k;
        }
        ASSERT_EQ(r.dequantized[o][j].item<float>(), scale * got);
      }
    }
  }
}

// The layer of a result, run through the host as a model runs it.
at::Tensor forward(const qh::QuantResult& r, const at::Tensor& x) {
  qh::PackedLayer layer(component("org.qforge.w8a8.layer"), r);
  return layer.forward(x);
}

TEST(Layer, Int8ForwardIsTheFormatsDefinitionBitForBit) {
  const at::Tensor w = weights(37, 70, 7), b = gaussian({37}, 8);
  at::Tensor x = gaussian({2, 5, 70}, 9);
  x[0][1].zero_();  // an all-zero token
  x[1][2][4] = 80.f;  // an outlier
  for (bool is_static : {false, true}) {
    const at::Tensor absmax = x.abs().amax({0, 1});
    const qh::QuantResult r = quantize("org.qforge.w8a8", w,
                                       {{"activations", is_static ? "static" : "dynamic"}}, absmax, {}, b);
    const at::Tensor y = forward(r, x);
    const at::Tensor qw = r.tensors.at("weight").to(at::kLong), sw = r.tensors.at("weight_scale");
    const at::Tensor x2 = x.reshape({-1, 70});
    for (int64_t t = 0; t < x2.size(0); ++t) {
      // Per token: s = max|x| / 127 and q = clamp(round(x · 127 / max|x|), ±127), or the static scale.
      const float m = x2[t].abs().max().item<float>();
      const float s = is_static ? r.tensors.at("input_scale").item<float>() : m / 127.f;
      const float inv = is_static ? 1.f / s : (m > 0 ? 127.f / m : 0.f);
      at::Tensor q = at::empty({70}, at::kLong);
      for (int64_t j = 0; j < 70; ++j)
        q[j] = static_cast<int64_t>(std::min(127.f, std::max(-127.f, std::nearbyint(x2[t][j].item<float>() * inv))));
      const at::Tensor acc = qw.mv(q);  // exact integer sums
      for (int64_t o = 0; o < 37; ++o) {
        const float want = static_cast<float>(acc[o].item<int64_t>()) * (s * sw[o][0].item<float>()) + b[o].item<float>();
        ASSERT_EQ(y.reshape({-1, 37})[t][o].item<float>(), want) << (is_static ? "static " : "dynamic ") << t << "," << o;
      }
    }
  }
}

TEST(Layer, Fp8ForwardRoundsActivationsToE4m3) {
  const at::Tensor w = weights(21, 50, 10), x = gaussian({6, 50}, 11) * 3;
  const qh::QuantResult r = quantize("org.qforge.fp8", w, {});
  const at::Tensor y = forward(r, x);
  const at::Tensor xd = x.to(at::kDouble);
  const at::Tensor wd = r.dequantized.to(at::kDouble);
  at::Tensor want = at::empty({6, 21}, at::kDouble);
  for (int64_t t = 0; t < 6; ++t) {
    const float m = x[t].abs().max().item<float>(), s = m / 448.f;
    at::Tensor xr = at::empty({50}, at::kDouble);
    for (int64_t j = 0; j < 50; ++j)
      xr[j] = s * qforge::kernels::fp8_e4m3_to_float(
                      qforge::kernels::fp8_e4m3_from_float(x[t][j].item<float>() * (448.f / m)));
    want[t] = wd.mv(xr);
  }
  EXPECT_LT((y.to(at::kDouble) - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
  // Not the float32 activations: the rounding is real.
  EXPECT_GT((y.to(at::kDouble) - xd.mm(wd.t())).abs().max().item<double>(), 1e-4 * want.abs().max().item<double>());
}

TEST(Layer, BackwardAndDequantizeUseTheDecodedWeight) {
  for (const char* id : {"org.qforge.w8a8", "org.qforge.fp8"}) {
    const qh::QuantResult r = quantize(id, weights(9, 33, 12), {});
    qh::PackedLayer layer(component("org.qforge.w8a8.layer"), r);
    EXPECT_TRUE(at::equal(layer.dequantize(), r.dequantized)) << id;
    const at::Tensor gy = gaussian({4, 9}, 13);
    EXPECT_TRUE(at::allclose(layer.backward_input(gy), gy.mm(r.dequantized), 1e-5, 1e-6)) << id;
  }
}

TEST(Layer, RefusesMalformedResults) {
  const qh::QuantResult good = quantize("org.qforge.w8a8", weights(8, 16, 14), {});
  EXPECT_NO_THROW(qh::PackedLayer(component("org.qforge.w8a8.layer"), good));
  auto refused = [&](const std::function<void(qh::QuantResult&)>& edit, const char* needle) {
    qh::QuantResult bad = good;
    edit(bad);
    try {
      qh::PackedLayer layer(component("org.qforge.w8a8.layer"), bad);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  refused([](auto& r) { r.tensors["weight"] = r.tensors["weight"].to(at::kByte); }, "weight must be int8");
  refused([](auto& r) { r.tensors["weight_scale"] = at::ones({3, 1}); }, "weight_scale");
  refused([](auto& r) { r.tensors["weight_scale"] = -r.tensors["weight_scale"]; }, "positive");
  refused([](auto& r) {
    json m = json::parse(r.metadata);
    m["weights"]["num_bits"] = 4;
    r.metadata = m.dump();
  }, "num_bits");
  refused([](auto& r) {
    json m = json::parse(r.metadata);
    m["input_activations"] = nullptr;
    r.metadata = m.dump();
  }, "input_activations");
  refused([](auto& r) {
    json m = json::parse(r.metadata);
    m["input_activations"]["dynamic"] = false;
    m["input_activations"]["strategy"] = "tensor";
    r.metadata = m.dump();
  }, "input_scale");
}

}  // namespace
