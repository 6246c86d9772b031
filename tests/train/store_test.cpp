// Tuned parameters written back into their formats (qforge.layer.tunable
// revision 2, PackedLayer::store), for every in-tree format with tunable
// parameters: RTN, GPTQ (asymmetric act-order and symmetric), QuIP (per
// group and per tensor) and DBF. The params are moved off the format's
// grid; store rounds them to what the format stores and writes the format's
// tensors: the same names, dtypes and shapes, the codes untouched, GPTQ zero
// points integers in [1, maxq], float16 scales exactly float16, and a fresh
// layer made from the stored result computes what the tuned layer computes.
// The grid formats' codes tuned by straight-through offsets (revision 3).
// And org.qforge.blockwise through the pipeline (the last test).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "qforge_host/io/safetensors.hpp"
#include <qforge_kernels/affine_aten.hpp>
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace qh = qforge::host;

namespace {

struct Case {
  const char* method;
  qforge::test::Settings settings;
  const char* untouched;  // a tensor tuning must not change (the codes)
};

TEST(TunedStore, EveryFormatKeepsItsLayoutAndComputesWhatWasTuned) {
  const std::vector<Case> cases = {
      {"org.qforge.rtn", {{"bits", "3"}, {"group_size", "16"}, {"sym", "false"}}, "qweight"},
      {"org.qforge.gptq", {{"bits", "3"}, {"group_size", "16"}, {"sym", "false"}, {"desc_act", "true"}}, "qweight"},
      {"org.qforge.gptq", {{"bits", "4"}, {"group_size", "-1"}, {"sym", "true"}}, "g_idx"},
      {"org.qforge.quip", {{"bits", "2"}, {"group_size", "16"}}, "qweight"},
      {"org.qforge.quip", {{"bits", "3"}, {"scale", "tensor"}}, "sign_v"},
      {"org.qforge.dbf", {{"target_bits", "1.5"}, {"iters", "20"}}, "sign_a"},
  };
  at::manual_seed(3);
  const at::Tensor w = at::randn({40, 64}) * 0.05, x = at::randn({256, 64});
  const at::Tensor h = x.t().mm(x) / 128;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.method);
    const qh::Component* q = qforge::test::plugin_registry().find(c.method);
    ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
    const qh::QuantResult r = qforge::test::quantize(*q, w, h, c.settings, at::randn({40}));
    qh::PackedLayer layer(*qforge::test::plugin_registry().find_inference_layer(r.format), r);
    ASSERT_TRUE(layer.storable());
    for (auto& [name, p] : layer.tunable_params()) p.mul_(1.0 + 0.03 * at::randn_like(p)).add_(0.01);
    layer.update_params();
    const qh::QuantResult s = layer.store();
    EXPECT_EQ(s.format, r.format);
    EXPECT_EQ(s.metadata, r.metadata);
    ASSERT_EQ(s.tensors.size(), r.tensors.size());
    bool changed = false;
    for (const auto& [name, t] : r.tensors) {
      ASSERT_TRUE(s.tensors.count(name)) << name;
      const at::Tensor& u = s.tensors.at(name);
      EXPECT_EQ(u.scalar_type(), t.scalar_type()) << name;
      EXPECT_EQ(u.sizes(), t.sizes()) << name;
      changed = changed || !at::equal(u, t);
    }
    EXPECT_TRUE(changed) << "nothing was written back";
    EXPECT_TRUE(at::equal(s.tensors.at(c.untouched), r.tensors.at(c.untouched)));
    // The tuned (now rounded) layer and a fresh one from the stored result agree.
    const qh::PackedLayer fresh(*qforge::test::plugin_registry().find_inference_layer(s.format), s);
    const at::Tensor xs = at::randn({5, 64});
    EXPECT_TRUE(at::allclose(fresh.forward(xs), layer.forward(xs), 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(fresh.dequantize(), s.dequantized, 1e-5, 1e-6));
    EXPECT_FALSE(at::allclose(s.dequantized, r.dequantized, 1e-4, 1e-6)) << "the tuning was lost";
    // The params the layer now holds are exactly what the format stores.
    auto after = layer.tunable_params();
    qh::PackedLayer again(*qforge::test::plugin_registry().find_inference_layer(s.format), s);
    auto stored = again.tunable_params();
    for (size_t i = 0; i < after.size(); ++i)
      EXPECT_TRUE(at::equal(after[i].second, stored[i].second)) << after[i].first;
    if (std::string(c.method) == "org.qforge.gptq") {  // v1 stores zero − 1: integers in [1, maxq]
      const at::Tensor z = after[1].second;
      const double maxq = std::stoi(c.settings.at("bits")) == 3 ? 7 : 15;
      EXPECT_TRUE(at::equal(z, z.round()));
      EXPECT_GE(z.min().item<double>(), 1.0);
      EXPECT_LE(z.max().item<double>(), maxq);
      const at::Tensor sc = after[0].second;
      EXPECT_TRUE(at::equal(sc, sc.to(at::kHalf).to(at::kFloat))) << "scales not float16";
    }
  }
}

// Tuned codes (qforge.layer.tunable revision 3) in every grid format: the
// straight-through offsets v move codes to clamp(q₀ + round(v), 0, maxq);
// their gradient is scale · ∂L/∂W where the clamp does not hold; store
// writes the moved codes into the format's own code tensor (a fresh layer
// computes what the tuned one does) and the unpacked codes are those
// expected.
TEST(TunedStore, GridCodesMoveByStraightThroughOffsetsAndAreStored) {
  const std::vector<Case> cases = {
      {"org.qforge.rtn", {{"bits", "3"}, {"group_size", "16"}, {"sym", "false"}}, ""},
      {"org.qforge.gptq", {{"bits", "3"}, {"group_size", "16"}, {"sym", "false"}, {"desc_act", "true"}}, ""},
      {"org.qforge.gptq", {{"bits", "4"}, {"group_size", "-1"}, {"sym", "true"}}, ""},
      {"org.qforge.quip", {{"bits", "2"}, {"group_size", "16"}}, ""},
  };
  at::manual_seed(5);
  const at::Tensor w = at::randn({40, 64}) * 0.05, x = at::randn({256, 64});
  const at::Tensor h = x.t().mm(x) / 128;
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.method) + " bits " + c.settings.at("bits"));
    const qh::Component* q = qforge::test::plugin_registry().find(c.method);
    ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
    const qh::QuantResult r = qforge::test::quantize(*q, w, h, c.settings, at::Tensor());
    const qh::Component& inference = *qforge::test::plugin_registry().find_inference_layer(r.format);
    qh::PackedLayer layer(inference, r);
    ASSERT_TRUE(layer.codes_tunable());
    const size_t before = layer.tunable_params().size();
    layer.tune_codes();
    auto params = layer.tunable_params();
    ASSERT_EQ(params.size(), before + 1);
    EXPECT_EQ(params.back().first, "code_offsets");
    const at::Tensor v = params.back().second;
    ASSERT_EQ(v.sizes(), at::IntArrayRef({40, 64}));
    EXPECT_EQ(v.abs().max().item<double>(), 0.0);

    // The gradient: scale · G, G = grad_yᵀ x in the grid's frame (no
    // transforms for the plain formats; checked against a finite change of
    // the loss for all).
    const at::Tensor xs = at::randn({7, 64}), gy = at::randn({7, 40});
    std::vector<at::Tensor> grads;
    for (const auto& [name, p] : params) grads.push_back(at::zeros_like(p));
    layer.backward_params(xs, gy, grads);
    const at::Tensor gv = grads.back();
    EXPECT_GT(gv.abs().max().item<double>(), 0.0);
    // Moving one code by +1 changes L = Σ gy·y by about gv at that code
    // (exactly, as L is linear in W and only that weight moves).
    const at::Tensor y0 = layer.forward(xs);
    const int64_t o = 11, i = 23;
    const double grad_at = gv[o][i].item<double>();
    // The direction that stays inside the grid.
    const at::Tensor w0 = layer.dequantize();
    v[o][i] = 1.0;
    layer.update_params();
    double dL = (gy * (layer.forward(xs) - y0)).sum().item<double>();
    double step = 1.0;
    if (std::abs(dL) < 1e-9) {  // the code was at the top of the grid: go down
      v[o][i] = -1.0;
      layer.update_params();
      dL = (gy * (layer.forward(xs) - y0)).sum().item<double>();
      step = -1.0;
    }
    EXPECT_NEAR(dL, step * grad_at, 1e-3 * std::max(1.0, std::abs(grad_at)));
    if (std::string(c.method) != "org.qforge.quip") {  // one weight moved, by one grid step
      EXPECT_EQ(((layer.dequantize() - w0).abs() > 1e-7).sum().item<int64_t>(), 1);
    }

    // Random offsets, clipped to [-1, 1] by update; stored into the format.
    v.copy_(at::randn_like(v) * 0.8);
    layer.update_params();
    EXPECT_LE(v.abs().max().item<double>(), 1.0);
    const qh::QuantResult s = layer.store();
    ASSERT_EQ(s.tensors.size(), r.tensors.size());
    for (const auto& [name, t] : r.tensors) {
      ASSERT_TRUE(s.tensors.count(name)) << name;
      EXPECT_EQ(s.tensors.at(name).scalar_type(), t.scalar_type()) << name;
      EXPECT_EQ(s.tensors.at(name).sizes(), t.sizes()) << name;
    }
    EXPECT_FALSE(at::equal(s.tensors.at("qweight"), r.tensors.at("qweight"))) << "no code moved";
    const qh::PackedLayer fresh(inference, s);
    const at::Tensor xt = at::randn({5, 64});
    EXPECT_TRUE(at::allclose(fresh.forward(xt), layer.forward(xt), 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(fresh.dequantize(), s.dequantized, 1e-5, 1e-6));
    if (std::string(c.method) != "org.qforge.quip") {  // the plain grids' codes, unpacked
      const auto unpack = [](const qh::QuantResult& res) {
        return qforge::kernels::unpack_affine(res.format, res.metadata, res.tensors).codes;
      };
      const int64_t maxq = (int64_t{1} << std::stoi(c.settings.at("bits"))) - 1;
      const at::Tensor want = (unpack(r).to(at::kFloat) + v.round()).clamp(0, static_cast<double>(maxq));
      EXPECT_TRUE(at::equal(unpack(s).to(at::kFloat), want));
    }
  }
}

// DBF's sign planes tuned straight through (revision 3): one offset tensor
// per plane; flipping one sign changes L = Σ grad_y·y by exactly −2·S₀ times
// its gradient (L is linear in each plane); store writes the flipped planes
// into sign_a / sign_b, and a fresh layer computes what the tuned one does.
TEST(TunedStore, DbfSignsMoveByStraightThroughOffsetsAndAreStored) {
  at::manual_seed(9);
  const at::Tensor w = at::randn({40, 64}) * 0.05, x = at::randn({256, 64});
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.dbf");
  ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
  const qh::QuantResult r = qforge::test::quantize(*q, w, x.t().mm(x) / 128,
                                                   {{"target_bits", "1.5"}, {"iters", "20"}}, at::Tensor());
  const qh::Component& inference = *qforge::test::plugin_registry().find_inference_layer(r.format);
  qh::PackedLayer layer(inference, r);
  ASSERT_TRUE(layer.codes_tunable());
  layer.tune_codes();
  auto params = layer.tunable_params();
  ASSERT_EQ(params.size(), 5u);  // s0, s2, s4, then the offsets of S_B and S_A
  EXPECT_EQ(params[3].first, "code_offsets.sign_b");
  EXPECT_EQ(params[4].first, "code_offsets.sign_a");
  const int64_t k = params[1].second.size(0);
  EXPECT_EQ(params[3].second.sizes(), at::IntArrayRef({k, 64}));
  EXPECT_EQ(params[4].second.sizes(), at::IntArrayRef({40, k}));

  const at::Tensor xs = at::randn({7, 64}), gy = at::randn({7, 40});
  std::vector<at::Tensor> grads;
  for (const auto& [name, p] : params) grads.push_back(at::zeros_like(p));
  layer.backward_params(xs, gy, grads);
  const at::Tensor y0 = layer.forward(xs);
  for (int plane : {3, 4}) {
    SCOPED_TRACE(params[plane].first);
    at::Tensor v = params[plane].second;
    const int64_t a = 3, b = 5;
    // Which sign is there: the dense weight moves when it flips.
    const at::Tensor w0 = layer.dequantize();
    v[a][b] = 2.0;
    layer.update_params();
    double sign0 = at::equal(layer.dequantize(), w0) ? 1.0 : -1.0;  // +2 left it: it was +1
    v[a][b] = -2.0 * sign0;  // flip it
    layer.update_params();
    const double dL = (gy * (layer.forward(xs) - y0)).sum().item<double>();
    const double want = -2.0 * sign0 * grads[plane][a][b].item<double>();
    EXPECT_NEAR(dL, want, 1e-4 * std::max(1.0, std::abs(want)));
    v[a][b] = 0.0;
    layer.update_params();
    EXPECT_TRUE(at::allclose(layer.forward(xs), y0, 1e-6, 1e-6));
  }
  for (int plane : {3, 4}) params[plane].second.copy_(at::randn_like(params[plane].second) * 1.5);
  layer.update_params();
  EXPECT_LE(params[3].second.abs().max().item<double>(), 2.0);
  const qh::QuantResult s = layer.store();
  EXPECT_FALSE(at::equal(s.tensors.at("sign_a"), r.tensors.at("sign_a")));
  EXPECT_FALSE(at::equal(s.tensors.at("sign_b"), r.tensors.at("sign_b")));
  for (const auto& [name, t] : r.tensors) {
    EXPECT_EQ(s.tensors.at(name).scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(s.tensors.at(name).sizes(), t.sizes()) << name;
  }
  const qh::PackedLayer fresh(inference, s);
  EXPECT_TRUE(at::allclose(fresh.forward(xs), layer.forward(xs), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(fresh.dequantize(), s.dequantized, 1e-5, 1e-6));
}

}  // namespace

namespace {

// org.qforge.blockwise in the pipeline (GPTQ 3-bit g32, stories260K, two
// epochs): the checkpoint is still an AutoGPTQ v1 checkpoint (the same
// tensors, dtypes and shapes as without the post-process; block 0's codes
// and g_idx bit for bit, its scales and zero points moved), every linear's
// scales tuned, and the model's loss on held-out text lower than without it.
TEST(Blockwise, TunesGptqInThePipelineAndKeepsTheCheckpointFormat) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  QFORGE_REQUIRE_SHARED(valid, "data/tinystories_valid.txt");
  auto& registry = qforge::test::plugin_registry();
  auto run = [&](bool blockwise, const char* lr = "1e-3") {
    const std::string out =
        qforge::test::temp_path("qforge_blockwise", blockwise ? std::string("on") + lr : "off");
    qh::QuantizeOptions o;
    o.model_dir = model;
    o.out_dir = out;
    o.method = "org.qforge.gptq";
    o.params = {{"bits", "3"}, {"group_size", "32"}, {"sym", "false"}, {"desc_act", "true"}};
    o.calibration.file = calib;
    o.calibration.nsamples = 32;
    o.calibration.seqlen = 128;
    if (blockwise) o.block_postprocesses = {{"org.qforge.blockwise", {{"epochs", "3"}, {"lr", lr}}}};
    qh::CheckpointWriter writer(qh::make_save_format("gptq"), model, out);
    qh::quantize_model(registry, o, writer);
    return out;
  };
  const std::string off = run(false), on = run(true);
  const qh::TensorStore a(off), b(on);
  ASSERT_EQ(a.names(), b.names());
  int moved = 0;
  for (const auto& name : a.names()) {
    const at::Tensor x = a.view(name), y = b.view(name);
    ASSERT_EQ(x.scalar_type(), y.scalar_type()) << name;
    ASSERT_EQ(x.sizes(), y.sizes()) << name;
    const bool same = at::equal(x, y);
    // Block 0's codes are the quantizer's (later blocks are quantized on the
    // tuned blocks' outputs, so theirs may differ).
    if (name.rfind("model.layers.0.", 0) == 0 &&
        (name.find(".qweight") != std::string::npos || name.find(".g_idx") != std::string::npos)) {
      EXPECT_TRUE(same) << name << ": the codes must not move";
    }
    if (name.find(".scales") != std::string::npos) moved += !same;
  }
  EXPECT_EQ(moved, 35) << "every linear's scales tuned";
  // Held-out loss: the first 4 windows of 128 tokens of tinystories_valid.txt.
  auto loss = [&](const std::string& dir) {
    const qh::Model m = qh::load_model(registry, dir, at::kFloat);
    auto tok = qh::load_tokenizer(dir);
    std::ifstream f(valid);
    std::string text((std::istreambuf_iterator<char>(f)), {});
    auto ids32 = tok->encode(text.substr(0, 20000), true);
    at::Tensor ids = at::tensor(std::vector<int64_t>(ids32.begin(), ids32.begin() + 4 * 128)).view({4, 128});
    const at::Tensor logits = m.forward(ids);
    return at::cross_entropy_loss(logits.narrow(1, 0, 127).reshape({-1, logits.size(-1)}),
                                  ids.narrow(1, 1, 127).reshape({-1}))
        .item<double>();
  };
  const double l_off = loss(off), l_on = loss(on);
  std::printf("held-out loss: GPTQ 3-bit g32 %.4f, + blockwise %.4f\n", l_off, l_on);
  EXPECT_LT(l_on, l_off);
  // Tuning that makes a block worse (a learning rate of 0.5 overshoots) is
  // rolled back: the checkpoint is the untuned one, tensor for tensor.
  const std::string wild = run(true, "0.5");
  const qh::TensorStore c(wild);
  ASSERT_EQ(a.names(), c.names());
  for (const auto& name : a.names()) EXPECT_TRUE(at::equal(a.view(name), c.view(name))) << name;
  std::filesystem::remove_all(off);
  std::filesystem::remove_all(on);
  std::filesystem::remove_all(wild);
}

}  // namespace
