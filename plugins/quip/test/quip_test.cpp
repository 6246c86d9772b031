// QuIP (plugins/quip): the transforms are seeded and repeatable; at 2 bits
// per row its output error is below GPTQ's (no transforms) on a layer with an
// outlier input channel; the
// quantizer's packed tensors, run by org.qforge.affine.layer (the affine
// table's quip/1 row, with transforms), give its own dequantized weight
// (forward at the kernels' batch and above, backward_input, dequantize), with
// built-in Hadamard sizes and with the random-orthogonal fallback (172); the
// tunable scales stay exact derivatives; a stories260K checkpoint written
// packed reads back with the logits of its dequantized weights.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../../../tests/support/plugins.hpp"
#include "../../../tests/support/test_data.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "quip.hpp"

namespace qh = qforge::host;
namespace quip = qforge::quip;

namespace {

at::Tensor weight(int64_t n, int64_t m) {
  at::manual_seed(5);
  return at::randn({n, m}) * 0.02 + at::randn({n, 1}) * at::randn({1, m}) * 0.01;
}

at::Tensor hessian(int64_t m, int64_t samples = 512) {
  at::Tensor x = at::randn({samples, m}) * at::linspace(0.2, 2.0, m);
  x.select(1, 3).mul_(20);  // an outlier channel, which incoherence spreads
  return x.t().mm(x) * (2.0 / samples);
}

TEST(Quip, TransformsAreSeededAndStored) {
  const quip::Transform a = quip::make_transform(172, 7), b = quip::make_transform(172, 7);
  EXPECT_FALSE(a.hadamard_base);  // no Hadamard matrix of order 172: H_4 ⊗ Q_43
  EXPECT_EQ(a.t->base(), qforge::kernels::random_orthogonal(43, a.base_seed));
  EXPECT_EQ(a.t->pow2(), 4);
  EXPECT_EQ(a.t->base_order(), 43);
  EXPECT_EQ(a.t->signs(), b.t->signs());
  EXPECT_EQ(a.t->base(), b.t->base());
  EXPECT_NE(quip::make_transform(172, 8).t->signs(), a.t->signs());
  const quip::Transform h = quip::make_transform(80, 1);
  EXPECT_TRUE(h.hadamard_base);
  EXPECT_EQ(h.t->pow2() * h.t->base_order(), 80);
  const at::Tensor t = at::tensor(a.t->matrix(), at::kFloat).view({172, 172});
  EXPECT_TRUE(at::allclose(t.mm(t.t()), at::eye(172), 1e-5, 1e-5));  // orthogonal
}

TEST(Quip, LayerRunsWhatTheQuantizerWrote) {
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.quip");
  ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
  for (auto [n, m] : {std::pair<int64_t, int64_t>{48, 80}, {64, 172}, {172, 64}}) {
    const at::Tensor w = weight(n, m), h = hessian(m);
    for (const char* scale : {"group", "tensor"}) {
      qh::QuantResult r = qforge::test::quantize(
          *q, w, h, {{"bits", "3"}, {"group_size", "32"}, {"scale", scale}}, at::randn({n}));
      ASSERT_EQ(r.format, "org.qforge.quip/1");
      const qh::Component* layer = qforge::test::plugin_registry().find_inference_layer(r.format);
      ASSERT_NE(layer, nullptr);
      qh::PackedLayer packed(*layer, r);
      const std::string what = std::to_string(n) + "x" + std::to_string(m) + " " + scale;
      EXPECT_TRUE(at::allclose(packed.dequantize(), r.dequantized, 1e-4, 1e-5)) << what;
      for (int64_t rows : {3, 300}) {  // the packed kernels and dequantize + GEMM
        const at::Tensor x = at::randn({rows, m});
        EXPECT_TRUE(at::allclose(packed.forward(x), x.mm(r.dequantized.t()) + r.tensors.at("bias"),
                                 1e-3, 1e-4))
            << what << " rows " << rows;
        const at::Tensor gy = at::randn({rows, n});
        EXPECT_TRUE(at::allclose(packed.backward_input(gy), gy.mm(r.dequantized), 1e-3, 1e-4))
            << what << " rows " << rows;
      }
      const double rel = ((r.dequantized - w).norm() / w.norm()).item<double>();
      EXPECT_LT(rel, 0.5) << what;
    }
  }
}

TEST(Quip, IncoherenceHelpsAtTwoBits) {
  // The output error tr((W − Ŵ) H (W − Ŵ)ᵀ) of QuIP 2-bit with one grid per
  // row (inputs transformed) against GPTQ without transforms, 2-bit per row.
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.quip");
  const qh::Component* g = qforge::test::plugin_registry().find("org.qforge.gptq");
  ASSERT_NE(q, nullptr);
  ASSERT_NE(g, nullptr);
  const at::Tensor w = weight(96, 128), h = hessian(128, 2048);
  auto err = [&](const at::Tensor& d) { return ((w - d).mm(h) * (w - d)).sum().item<double>(); };
  const double e_quip = err(qforge::test::quantize(*q, w, h, {{"bits", "2"}, {"group_size", "-1"}}).dequantized);
  const double e_gptq =
      err(qforge::test::quantize(*g, w, h, {{"bits", "2"}, {"group_size", "-1"}, {"sym", "false"}}).dequantized);
  std::printf("2-bit per-row output error: QuIP %.4g, GPTQ %.4g\n", e_quip, e_gptq);
  EXPECT_LT(e_quip, e_gptq);
}

TEST(Quip, ScaleGradientsAreExact) {
  // W is linear in the scales: a central difference along any direction is
  // exact up to rounding, and must match backward_params.
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.quip");
  const at::Tensor w = weight(48, 80);
  qh::QuantResult r = qforge::test::quantize(*q, w, hessian(80), {{"bits", "3"}, {"group_size", "16"}});
  qh::PackedLayer packed(*qforge::test::plugin_registry().find_inference_layer(r.format), r);
  ASSERT_TRUE(packed.tunable());
  auto params = packed.tunable_params();
  const at::Tensor x = at::randn({7, 80}), gy = at::randn({7, 48});
  std::vector<at::Tensor> grads = {at::zeros_like(params[0].second), at::zeros_like(params[1].second)};
  packed.backward_params(x, gy, grads);
  for (size_t i = 0; i < 2; ++i) {
    const at::Tensor dir = at::randn_like(params[i].second), base = params[i].second.clone();
    auto loss = [&](double eps) {
      params[i].second.copy_(base + eps * dir);
      packed.update_params();
      return (packed.forward(x) * gy).sum().item<double>();
    };
    const double eps = 1e-2 * base.abs().max().item<double>();
    const double fd = (loss(eps) - loss(-eps)) / (2 * eps), an = (grads[i] * dir).sum().item<double>();
    params[i].second.copy_(base);
    packed.update_params();
    EXPECT_NEAR(fd, an, 1e-3 * (1 + std::abs(an))) << params[i].first;
  }
}

TEST(QuipCheckpoint, PackedCheckpointReadsBackWithTheDequantizedLogits) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  const std::string out = qforge::test::temp_path("qforge_quip", "ckpt");
  qh::QuantizeOptions o;
  o.model_dir = model;
  o.out_dir = out;
  o.method = "org.qforge.quip";
  o.params = {{"bits", "2"}, {"scale", "tensor"}};  // both sides transformed
  o.calibration.file = calib;
  o.calibration.nsamples = 8;
  o.calibration.seqlen = 128;
  o.qep = true;
  auto& registry = qforge::test::plugin_registry();
  {
    qh::CheckpointWriter writer(qh::make_save_format("quip"), model, out);
    qh::quantize_model(registry, o, writer);
  }
  {  // quant_method "quip", each layer's transforms in its metadata
    std::ifstream f(out + "/config.json");
    const nlohmann::json q = nlohmann::json::parse(f)["quantization_config"];
    EXPECT_EQ(q["quant_method"], "quip");
    const auto& l = q["layers"]["model.layers.0.mlp.down_proj"];  // 172 inputs: the fallback base
    EXPECT_EQ(l["metadata"]["v_base_kind"], "random");  // regenerated from v_seed
    EXPECT_EQ(l["metadata"]["v_pow2"].get<int64_t>() * l["metadata"]["v_base"].get<int64_t>(), 172);
    EXPECT_EQ(l["metadata"]["u_base_kind"], "hadamard");
  }
  const qh::Model m = qh::load_model(registry, out, at::kFloat);
  qh::Model dense = qh::load_model(registry, out, at::kFloat);
  int packed = 0;
  for (auto& b : dense.blocks())
    for (qh::Linear* l : b.linears()) {
      ASSERT_TRUE(l->packed) << l->name;
      EXPECT_EQ(l->packed->format_id(), "org.qforge.quip/1");
      ++packed;
      l->weight = l->packed->dequantize();
      l->packed.reset();
    }
  EXPECT_EQ(packed, 35);
  const at::Tensor ids = at::randint(1, 500, {2, 24}, at::kLong);
  const at::Tensor a = m.forward(ids), d = dense.forward(ids);
  EXPECT_LT((a - d).abs().max().item<double>(), 1e-3 * d.abs().max().item<double>());
  EXPECT_TRUE(at::equal(a.argmax(-1), d.argmax(-1)));
  // Read back twice: the same logits (the transforms are rebuilt from what is stored).
  EXPECT_TRUE(at::equal(qh::load_model(registry, out, at::kFloat).forward(ids), a));
  std::filesystem::remove_all(out);
}

}  // namespace
