// Tests of qforge-sparsegpt through the host registry, as the pipeline and
// the loaders call it: the masks of org.qforge.sparsegpt and
// org.qforge.magnitude (exactly N of every M, the unstructured fraction),
// SparseGPT's output error against magnitude pruning's on stories260K's real
// activations, its int and FP8 outputs (still exactly 2:4 once decoded), and
// org.qforge.pruned.layer against qforge/formats/pruned_v1.h, refusing files
// that lie.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/gptq_v1.h>
#include <qforge/formats/pruned_v1.h>
#include <qforge_host/base/errors.hpp>
#include <qforge_host/data/calibration.hpp>
#include <qforge_host/model/model.hpp>
#include <qforge_host/tokenizer/tokenizer.hpp>
#include <qforge_kernels/fp8.hpp>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "support/plugins.hpp"
#include "support/real_layers.hpp"
#include "support/test_data.hpp"

namespace {

namespace qh = qforge::host;
using nlohmann::json;
using qforge::test::gaussian;
using qforge::test::Settings;
using qforge::test::synthetic_hessian;

const qh::Component& component(const char* id) {
  const qh::Component* c = qforge::test::plugin_registry().find(id);
  if (c == nullptr)
    throw std::runtime_error(std::string(id) + " not loaded" + qforge::test::plugin_refusals());
  return *c;
}

qh::QuantResult run(const char* id, const at::Tensor& w, const at::Tensor& h, const Settings& s,
                    const at::Tensor& bias = {}) {
  return qforge::test::quantize(component(id), w, h, s, bias);
}

// Zeros in every group of m along the rows of w [out, in].
at::Tensor zeros_per_group(const at::Tensor& w, int64_t m) {
  return w.reshape({w.size(0), -1, m}).eq(0).sum(2);
}

// tr((W − Ŵ) H (W − Ŵ)ᵀ): the layer's output error on the calibration set.
double output_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  const at::Tensor d = (w - q).to(at::kDouble);
  return d.mm(h.to(at::kDouble)).mul(d).sum().item<double>();
}

// ------------------------------------------------------------------ masks --

TEST(Masks, SparseGptTwoOfFourIsExact) {
  const at::Tensor w = gaussian({24, 128}, 1), h = synthetic_hessian(128, 2), b = gaussian({24}, 3);
  const qh::QuantResult r = run("org.qforge.sparsegpt", w, h, {}, b);  // defaults: 2:4, float
  EXPECT_EQ(r.format, QFORGE_FORMAT_PRUNED_V1);
  const at::Tensor q = r.tensors.at(QFORGE_PRUNED_V1_WEIGHT);
  EXPECT_TRUE(zeros_per_group(q, 4).eq(2).all().item<bool>());
  EXPECT_TRUE(at::equal(r.dequantized, q));
  EXPECT_TRUE(at::equal(r.tensors.at(QFORGE_PRUNED_V1_BIAS), b));
  EXPECT_EQ(json::parse(r.metadata),
            json({{"in_features", 128}, {"out_features", 24}, {"sparsity_structure", "2:4"},
                  {"sparsity", 0.5}}));
  EXPECT_TRUE(r.metrics.count("hessian_error"));
  // Other N:M patterns.
  const qh::QuantResult r48 = run("org.qforge.sparsegpt", w, h, {{"mask", "4:8"}});
  EXPECT_TRUE(zeros_per_group(r48.dequantized, 8).eq(4).all().item<bool>());
  EXPECT_EQ(json::parse(r48.metadata)["sparsity_structure"], "4:8");
}

TEST(Masks, MagnitudeTwoOfFourPrunesTheSmallestTwo) {
  const at::Tensor w = gaussian({16, 64}, 4);
  const qh::QuantResult r = run("org.qforge.magnitude", w, {}, {});
  const at::Tensor q = r.tensors.at(QFORGE_PRUNED_V1_WEIGHT);
  EXPECT_TRUE(zeros_per_group(q, 4).eq(2).all().item<bool>());
  // The kept weights are unchanged and each is larger than both pruned ones of its group.
  EXPECT_TRUE(at::equal(q.ne(0) * w, q));
  const at::Tensor g = w.abs().reshape({16, 16, 4}), kept = q.ne(0).reshape({16, 16, 4});
  const at::Tensor min_kept = at::where(kept, g, at::full_like(g, 1e9)).amin(2);
  const at::Tensor max_pruned = at::where(kept, at::zeros_like(g), g).amax(2);
  EXPECT_TRUE(min_kept.ge(max_pruned).all().item<bool>());
}

TEST(Masks, UnstructuredReachesItsFraction) {
  const at::Tensor w = gaussian({32, 128}, 5), h = synthetic_hessian(128, 6);
  for (const char* id : {"org.qforge.sparsegpt", "org.qforge.magnitude"}) {
    SCOPED_TRACE(id);
    const qh::QuantResult r = run(id, w, h, {{"mask", "unstructured"}, {"sparsity", "0.6"}});
    const int64_t zeros = r.dequantized.eq(0).sum().item<int64_t>();
    EXPECT_EQ(zeros, static_cast<int64_t>(32 * 128 * 0.6));
    const json m = json::parse(r.metadata);
    EXPECT_EQ(m["sparsity_structure"], "unstructured");
    EXPECT_DOUBLE_EQ(m["sparsity"].get<double>(), static_cast<double>(zeros) / (32 * 128));
  }
}

TEST(Masks, BadMasksAreRefused) {
  const at::Tensor w = gaussian({8, 64}, 7), h = synthetic_hessian(64, 8);
  for (const char* mask : {"2:2", "0:4", "2:65", "2:4x", "two:four", "-2:4", "structured"}) {
    SCOPED_TRACE(mask);
    for (const char* id : {"org.qforge.sparsegpt", "org.qforge.magnitude"})
      EXPECT_THROW(run(id, w, h, {{"mask", mask}}), qh::PluginError);
  }
  // The input width must be a multiple of M.
  EXPECT_THROW(run("org.qforge.magnitude", gaussian({8, 66}, 9), {}, {{"mask", "2:4"}}), qh::PluginError);
  EXPECT_THROW(run("org.qforge.sparsegpt", gaussian({8, 66}, 9), synthetic_hessian(66, 10), {}),
               qh::PluginError);
  // SparseGPT needs calibration.
  try {
    run("org.qforge.sparsegpt", w, {}, {});
    FAIL() << "no Hessian accepted";
  } catch (const qh::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("--calib"), std::string::npos) << e.what();
  }
}

// ------------------------------------------------------- quantized output --

// W[o, i] of an org.qforge.gptq/1 result, decoded from its tensors as
// gptq_v1.h says (bit streams of `bits`, LSB first).
at::Tensor decode_gptq_v1(const qh::QuantResult& r, int bits) {
  const at::Tensor qweight = r.tensors.at(QFORGE_GPTQ_V1_QWEIGHT).contiguous();
  const at::Tensor qzeros = r.tensors.at(QFORGE_GPTQ_V1_QZEROS).contiguous();
  const at::Tensor scales = r.tensors.at(QFORGE_GPTQ_V1_SCALES).to(at::kFloat).contiguous();
  const at::Tensor g_idx = r.tensors.at(QFORGE_GPTQ_V1_G_IDX).contiguous();
  const int64_t in = g_idx.size(0), out = qweight.size(1);
  auto code = [bits](const std::function<uint32_t(int64_t)>& word, int64_t i) {
    uint32_t v = 0;
    for (int t = 0; t < bits; ++t) {
      const int64_t s = i * bits + t;
      v |= ((word(s / 32) >> (s % 32)) & 1u) << t;
    }
    return static_cast<float>(v);
  };
  const auto* qw = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
  const auto* qz = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
  at::Tensor w = at::empty({out, in}, at::kFloat);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      const int32_t g = g_idx.data_ptr<int32_t>()[i];
      const float q = code([&](int64_t k) { return qw[k * out + o]; }, i);
      const float z = code([&](int64_t k) { return qz[g * qzeros.size(1) + k]; }, o) + 1;
      w[o][i] = scales[g][o].item<float>() * (q - z);
    }
  return w;
}

TEST(Quantized, IntWeightsAreGptqV1AndExactlyTwoOfFour) {
  const at::Tensor w = gaussian({32, 128}, 11), h = synthetic_hessian(128, 12);
  for (const char* sym : {"true", "false"}) {
    SCOPED_TRACE(std::string("sym=") + sym);
    const qh::QuantResult r = run("org.qforge.sparsegpt", w, h,
                                  {{"weights", "int"}, {"bits", "4"}, {"group_size", "32"}, {"sym", sym}});
    EXPECT_EQ(r.format, QFORGE_FORMAT_GPTQ_V1);
    const json m = json::parse(r.metadata);
    EXPECT_EQ(m["sparsity_structure"], "2:4");
    EXPECT_EQ(m["bits"], 4);
    EXPECT_EQ(m["group_size"], 32);
    const at::Tensor decoded = decode_gptq_v1(r, 4);
    EXPECT_TRUE(at::equal(decoded, r.dequantized));
    EXPECT_TRUE(zeros_per_group(decoded, 4).eq(2).all().item<bool>());
  }
}

TEST(Quantized, Fp8WeightsAreDynamicFp8AndExactlyTwoOfFour) {
  const at::Tensor w = gaussian({32, 128}, 13), h = synthetic_hessian(128, 14);
  const qh::QuantResult r = run("org.qforge.sparsegpt", w, h, {{"weights", "fp8"}});
  EXPECT_EQ(r.format, QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1);
  const json m = json::parse(r.metadata);
  EXPECT_EQ(m["sparsity_structure"], "2:4");
  EXPECT_EQ(m["weights"]["type"], "float");
  EXPECT_EQ(m["weights"]["strategy"], "channel");
  EXPECT_EQ(m["input_activations"]["strategy"], "token");
  EXPECT_EQ(m["input_activations"]["dynamic"], true);
  const at::Tensor codes = r.tensors.at(QFORGE_CT_WEIGHT), s = r.tensors.at(QFORGE_CT_NAIVE_WEIGHT_SCALE);
  ASSERT_EQ(codes.scalar_type(), at::kByte);
  ASSERT_EQ(s.sizes(), at::IntArrayRef({32, 1}));
  at::Tensor decoded = at::empty({32, 128}, at::kFloat);
  for (int64_t k = 0; k < codes.numel(); ++k)
    decoded.view(-1)[k] = s[k / 128][0].item<float>() *
                          qforge::kernels::fp8_e4m3_to_float(codes.view(-1)[k].item<uint8_t>());
  EXPECT_TRUE(at::equal(decoded, r.dequantized));
  EXPECT_TRUE(zeros_per_group(decoded, 4).eq(2).all().item<bool>());
  // org.qforge.w8a8.layer runs it.
  EXPECT_NO_THROW(qh::PackedLayer(component("org.qforge.w8a8.layer"), r));
}

// ------------------------------------------------------ real activations --

using qforge::test::RealLayer;

// q_proj, up_proj and down_proj of blocks 0 and 4 of stories260K, with the
// Hessians 2/n XᵀX of their inputs on 16 windows of 128 calibration tokens.
std::vector<RealLayer> real_layers(const std::string& shared) {
  return qforge::test::real_layers(shared, 3, {0, 4},
                                   {"self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"});
}

TEST(RealActivations, SparseGptBeatsMagnitude) {
  QFORGE_REQUIRE_SHARED(model_dir, "models/stories260K");
  const std::vector<RealLayer> layers = real_layers(qforge::test::shared_dir());
  ASSERT_EQ(layers.size(), 6u);
  for (const RealLayer& l : layers) {
    SCOPED_TRACE(l.name);
    for (const char* mask : {"2:4", "unstructured"}) {
      SCOPED_TRACE(mask);
      const Settings s = {{"mask", mask}};
      const qh::QuantResult sparse = run("org.qforge.sparsegpt", l.weight, l.hessian, s);
      const qh::QuantResult magnitude = run("org.qforge.magnitude", l.weight, {}, s);
      EXPECT_EQ(sparse.dequantized.eq(0).sum().item<int64_t>(),
                magnitude.dequantized.eq(0).sum().item<int64_t>());
      const double e_sparse = output_error(l.weight, sparse.dequantized, l.hessian);
      const double e_magnitude = output_error(l.weight, magnitude.dequantized, l.hessian);
      EXPECT_LT(e_sparse, 0.8 * e_magnitude) << e_sparse << " vs " << e_magnitude;
    }
    // With 4-bit weights: still exactly 2:4, and better than magnitude pruning alone.
    const qh::QuantResult q4 = run("org.qforge.sparsegpt", l.weight, l.hessian,
                                   {{"weights", "int"}, {"group_size", "32"}});
    EXPECT_TRUE(zeros_per_group(q4.dequantized, 4).eq(2).all().item<bool>());
    const qh::QuantResult magnitude = run("org.qforge.magnitude", l.weight, {}, {});
    EXPECT_LT(output_error(l.weight, q4.dequantized, l.hessian),
              output_error(l.weight, magnitude.dequantized, l.hessian));
  }
}

// ------------------------------------------------------------------ layer --

qh::PackedLayer layer_of(const qh::QuantResult& r) {
  return qh::PackedLayer(component("org.qforge.pruned.layer"), r);
}

// 2:4 runs compressed on the 2:4 kernel (up to 16 rows everywhere, 128
// with AVX-512) and dense above; other structures dense: the same product
// within float32 rounding, the weight itself exactly.
TEST(Layer, ForwardIsTheDenseProduct) {
  for (const char* mask : {"2:4", "1:4", "unstructured"}) {
    SCOPED_TRACE(mask);
    const at::Tensor w = gaussian({20, 68}, 21), b = gaussian({20}, 22);
    const qh::QuantResult r = run("org.qforge.magnitude", w, {}, {{"mask", mask}}, b);
    qh::PackedLayer layer = layer_of(r);
    const at::Tensor q = r.tensors.at("weight");
    for (int64_t rows : {1, 3, 15, 300}) {
      const at::Tensor x = gaussian({rows, 68}, 23);
      EXPECT_TRUE(at::allclose(layer.forward(x), at::linear(x, q, b), 1e-5, 1e-5)) << rows;
    }
    EXPECT_TRUE(at::equal(layer.dequantize(), q));
    const at::Tensor gy = gaussian({4, 20}, 24);
    EXPECT_TRUE(at::allclose(layer.backward_input(gy), gy.mm(q), 1e-5, 1e-6));
  }
}

TEST(Layer, RefusesFilesThatLie) {
  const qh::QuantResult good = run("org.qforge.magnitude", gaussian({8, 32}, 25), {}, {});
  EXPECT_NO_THROW(layer_of(good));
  auto refused = [&](const std::function<void(qh::QuantResult&)>& edit, const char* needle) {
    qh::QuantResult bad = good;
    bad.tensors["weight"] = good.tensors.at("weight").clone();
    edit(bad);
    try {
      layer_of(bad);
      ADD_FAILURE() << "accepted: " << needle;
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto meta = [](qh::QuantResult& r, const char* key, const json& value) {
    json m = json::parse(r.metadata);
    m[key] = value;
    r.metadata = m.dump();
  };
  // A weight that breaks 2:4 (one zero filled in), its sparsity claim kept true.
  refused([&](auto& r) {
    at::Tensor w = r.tensors["weight"];
    const int64_t j = w[3].eq(0).nonzero()[0][0].item<int64_t>();
    w[3][j] = 1.f;
    meta(r, "sparsity", w.eq(0).sum().item<double>() / w.numel());
  }, "breaks it: row 3");
  // Claims 2:4 of a dense weight with its true sparsity.
  refused([&](auto& r) {
    r.tensors["weight"] = gaussian({8, 32}, 26);
    meta(r, "sparsity", 0.0);
  }, "claims 2:4");
  refused([&](auto& r) { meta(r, "sparsity", 0.25); }, "zero fraction");
  refused([&](auto& r) { meta(r, "sparsity_structure", "3:3"); }, "sparsity_structure");
  refused([&](auto& r) { meta(r, "sparsity_structure", "2:3"); }, "multiple of M");
  refused([&](auto& r) { meta(r, "in_features", 16); }, "weight must be float32 [8, 16]");
  refused([&](auto& r) {
    json m = json::parse(r.metadata);
    m.erase("sparsity_structure");
    r.metadata = m.dump();
  }, "sparsity_structure");
  refused([&](auto& r) { r.tensors["weight"] = r.tensors["weight"].to(at::kDouble); }, "float32");
  refused([&](auto& r) { r.tensors["weight"][0][1] = NAN; }, "NaN");
  refused([&](auto& r) { r.tensors["bias"] = at::zeros({7}); }, "bias must be float32 [8]");
  refused([&](auto& r) { r.tensors.erase("weight"); }, "weight");
}

TEST(Plugin, DescribesItsParameters) {
  const qh::Component& c = component("org.qforge.sparsegpt");
  std::map<std::string, std::string> defaults;
  for (uint32_t k = 0; k < c.desc->param_count; ++k)
    defaults[c.desc->params[k]->name] = c.desc->params[k]->default_value;
  EXPECT_EQ(defaults, (std::map<std::string, std::string>{{"mask", "2:4"},
                                                          {"sparsity", "0.5"},
                                                          {"weights", "float"},
                                                          {"bits", "4"},
                                                          {"group_size", "128"},
                                                          {"sym", "true"},
                                                          {"percdamp", "0.01"},
                                                          {"block_size", "128"}}));
  EXPECT_NE(qforge::test::plugin_registry().find_inference_layer(QFORGE_FORMAT_PRUNED_V1), nullptr);
}

}  // namespace
