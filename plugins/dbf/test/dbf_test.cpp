// DBF (plugins/dbf): the factorization gets better with more bits and is
// repeatable; the data-aware mode lowers the Hessian-weighted error; the
// quantizer's packed tensors, run by org.qforge.dbf.layer, give its own
// dequantized weight (forward, backward_input, dequantize); a malformed
// tensor is refused naming it.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <functional>

#include "../../../tests/support/plugins.hpp"
#include "../../../tests/support/test_data.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "dbf.hpp"

namespace dbf = qforge::dbf;
namespace qh = qforge::host;

namespace {

// A weight with structure (low rank + noise), [n, m].
at::Tensor weight(int64_t n, int64_t m) {
  at::manual_seed(11);
  return at::randn({n, 8}).mm(at::randn({8, m})) * 0.05 + at::randn({n, m}) * 0.02;
}

double rel_error(const at::Tensor& w, const at::Tensor& q) { return ((w - q).norm() / w.norm()).item<double>(); }

TEST(Dbf, MoreBitsFitBetterAndRunsRepeat) {
  const at::Tensor w = weight(48, 80);
  double previous = 1e9;
  for (double bits : {1.0, 1.5, 2.0, 3.0}) {
    dbf::Settings s;
    s.k = dbf::middle_dimension(bits, 48, 80);
    s.data_aware = false;
    s.iters = 60;
    const at::Tensor q = dbf::reconstruct(dbf::factorize(w, at::Tensor(), s));
    const double e = rel_error(w, q);
    EXPECT_LT(e, previous) << bits << " bits";
    previous = e;
    EXPECT_TRUE(q.equal(dbf::reconstruct(dbf::factorize(w, at::Tensor(), s)))) << "not repeatable";
  }
  EXPECT_LT(previous, 0.5);
  EXPECT_EQ(dbf::middle_dimension(1.5, 4096, 4096), 3072);
  EXPECT_NEAR(dbf::effective_bits(3072, 4096, 4096), 1.511, 1e-3);  // onecomp.md §3.5
  EXPECT_EQ(dbf::middle_dimension(1.5, 1024, 4096), 1228);  // above min(n, m) = 1024 is allowed
}

TEST(Dbf, DataAwareLowersTheOutputError) {
  const at::Tensor w = weight(40, 64);
  at::Tensor x = at::randn({512, 64}) * at::linspace(0.1, 3.0, 64);  // uneven input scales
  const at::Tensor h = x.t().mm(x) * (2.0 / 512);
  auto output_error = [&](const at::Tensor& q) { return ((w - q).mm(h).mul(w - q).sum()).item<double>(); };
  dbf::Settings s;
  s.k = dbf::middle_dimension(1.5, 40, 64);
  s.data_aware = false;
  s.svd_init = false;
  s.iters = 100;
  const double plain = output_error(dbf::reconstruct(dbf::factorize(w, h, s)));
  s.data_aware = true;
  s.svd_init = true;
  s.tol = 1e-4;
  const double aware = output_error(dbf::reconstruct(dbf::factorize(w, h, s)));
  EXPECT_LT(aware, plain);
}

TEST(Dbf, TheLayerRunsWhatTheQuantizerWrote) {
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.dbf");
  ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
  const at::Tensor w = weight(37, 53);  // odd shapes: partial bytes in both planes
  at::Tensor x = at::randn({256, 53});
  const at::Tensor h = x.t().mm(x) * (2.0 / 256);
  qh::QuantResult r = qforge::test::quantize(*q, w, h, {{"target_bits", "1.5"}, {"iters", "40"}},
                                             at::randn({37}));
  ASSERT_EQ(r.format, "org.qforge.dbf/1");
  const qh::Component* layer = qforge::test::plugin_registry().find_inference_layer(r.format);
  ASSERT_NE(layer, nullptr);
  qh::PackedLayer packed(*layer, r);
  EXPECT_TRUE(at::allclose(packed.dequantize(), r.dequantized, 1e-5, 1e-6));
  at::Tensor xs = at::randn({3, 5, 53});
  const at::Tensor want = at::matmul(xs, r.dequantized.t()) + r.tensors.at("bias");
  EXPECT_TRUE(at::allclose(packed.forward(xs), want, 1e-4, 1e-5));
  at::Tensor gy = at::randn({4, 37});
  EXPECT_TRUE(at::allclose(packed.backward_input(gy), gy.mm(r.dequantized), 1e-4, 1e-5));
  // Above the kernels' batch: unpack + GEMM, the same products.
  xs = at::randn({2, 30, 53});
  EXPECT_TRUE(at::allclose(packed.forward(xs), at::matmul(xs, r.dequantized.t()) + r.tensors.at("bias"),
                           1e-4, 1e-5));
  gy = at::randn({40, 37});
  EXPECT_TRUE(at::allclose(packed.backward_input(gy), gy.mm(r.dequantized), 1e-4, 1e-5));

  // k inconsistent with the planes: refused, naming the tensor.
  qh::QuantResult bad = r;
  bad.tensors["sign_b"] = r.tensors.at("sign_b").narrow(0, 0, r.tensors.at("sign_b").size(0) - 1);
  try {
    qh::PackedLayer broken(*layer, bad);
    FAIL() << "a short sign plane was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("sign_b"), std::string::npos) << e.what();
  }
}

// Rows of signs in dbf/1's layout (MSB first, 1 = +1) as ±1 doubles.
at::Tensor signs_of(const at::Tensor& packed, int64_t cols) {
  at::Tensor out = at::empty({packed.size(0), cols}, at::kDouble);
  for (int64_t r = 0; r < packed.size(0); ++r)
    for (int64_t j = 0; j < cols; ++j)
      out[r][j] = (packed[r][j / 8].item<int64_t>() >> (7 - j % 8)) & 1 ? 1.0 : -1.0;
  return out;
}

// The scale vectors are tunable: their gradients equal double-precision
// autograd through W = diag(s4)·S_A·diag(s2)·S_B·diag(s0), and an update in
// place changes what the layer computes (the signs stay).
TEST(Dbf, TheScaleVectorsAreTunable) {
  const qh::Component* q = qforge::test::plugin_registry().find("org.qforge.dbf");
  ASSERT_NE(q, nullptr) << qforge::test::plugin_refusals();
  const at::Tensor w = weight(29, 45);
  at::Tensor x = at::randn({128, 45});
  qh::QuantResult r = qforge::test::quantize(*q, w, x.t().mm(x) / 64, {{"iters", "30"}}, at::Tensor());
  qh::PackedLayer packed(*qforge::test::plugin_registry().find_inference_layer(r.format), r);
  ASSERT_TRUE(packed.tunable());
  auto params = packed.tunable_params();
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].first, "s0");
  EXPECT_EQ(params[1].first, "s2");
  EXPECT_EQ(params[2].first, "s4");
  const int64_t k = params[1].second.numel();
  const at::Tensor sa = signs_of(r.tensors.at("sign_a"), k), sb = signs_of(r.tensors.at("sign_b"), 45);
  for (int64_t rows : {3, 40}) {  // the kernels' batch and above
    const at::Tensor xr = at::randn({rows, 45}), gy = at::randn({rows, 29});
    std::vector<at::Tensor> s, grads;
    for (auto& [name, v] : params) {
      s.push_back(v.to(at::kDouble).requires_grad_(true));
      grads.push_back(at::zeros_like(v));
    }
    const at::Tensor wd = s[2].unsqueeze(1) * (sa * s[1].unsqueeze(0)).mm(sb) * s[0].unsqueeze(0);
    (xr.to(at::kDouble).mm(wd.t()) * gy.to(at::kDouble)).sum().backward();
    packed.backward_params(xr, gy, grads);
    for (size_t i = 0; i < 3; ++i) {
      const at::Tensor want = s[i].grad().to(at::kFloat);
      EXPECT_LT(((grads[i] - want).abs().max() / want.abs().max()).item<double>(), 1e-4)
          << params[i].first << " rows " << rows;
    }
  }
  const at::Tensor xr = at::randn({5, 45}), before = packed.forward(xr);
  params[2].second.mul_(2);
  packed.update_params();
  EXPECT_TRUE(at::allclose(packed.forward(xr), before * 2, 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(packed.dequantize(), r.dequantized * 2, 1e-5, 1e-6));
}

// The OneComp layout (--save-format dbf), written by the pipeline, read back
// by qforge, and decoded by a reader written here from research/onecomp.md
// §3.4 alone: scaling0/2/4 float16, bp1 = S_B and bp3 = S_A flattened
// row-major, 8 signs per byte MSB first, bit 1 = +1, k = len(scaling2).
// The packed model's logits equal the dequantized model's; malformed copies
// of the checkpoint are refused with one line naming the layer.
at::Tensor decode_onecomp(const qh::TensorStore& store, const std::string& layer) {
  const at::Tensor s0 = store.load(layer + ".scaling0", at::kFloat);
  const at::Tensor s2 = store.load(layer + ".scaling2", at::kFloat);
  const at::Tensor s4 = store.load(layer + ".scaling4", at::kFloat);
  const int64_t k = s2.size(0), m = s0.size(0), n = s4.size(0);
  auto signs = [&](const std::string& name, int64_t rows, int64_t cols) {
    const at::Tensor bytes = store.load(layer + "." + name, at::kByte);
    at::Tensor out = at::empty({rows * cols}, at::kFloat);
    for (int64_t b = 0; b < rows * cols; ++b)
      out[b] = (bytes[b / 8].item<int64_t>() >> (7 - b % 8)) & 1 ? 1.0 : -1.0;
    return out.view({rows, cols});
  };
  const at::Tensor sb = signs("bp1", k, m), sa = signs("bp3", n, k);
  return s4.unsqueeze(1) * at::matmul(sa, s2.unsqueeze(1) * sb) * s0.unsqueeze(0);
}

TEST(DbfCheckpoint, OneCompLayoutRoundTripsAndDecodesByItsDescription) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  const std::string out = qforge::test::temp_path("qforge_dbf", "ckpt");
  qh::QuantizeOptions o;
  o.model_dir = model;
  o.out_dir = out;
  o.method = "org.qforge.dbf";
  o.params = {{"target_bits", "1.5"}, {"iters", "20"}};
  o.selection.num_layers = 9;  // blocks 0 and the first two linears of block 1
  o.calibration.file = calib;
  o.calibration.nsamples = 8;
  o.calibration.seqlen = 128;
  auto& registry = qforge::test::plugin_registry();
  {
    qh::CheckpointWriter writer(qh::make_save_format("dbf"), model, out);
    qh::quantize_model(registry, o, writer);
  }
  const qh::Model m = qh::load_model(registry, out, at::kFloat);
  const qh::TensorStore store(out);
  int packed = 0;
  for (const auto& b : m.blocks())
    for (const qh::Linear* l : b.linears()) {
      if (!l->packed) continue;
      ++packed;
      EXPECT_EQ(l->packed->format_id(), "org.qforge.dbf/1");
      const at::Tensor theirs = decode_onecomp(store, l->name);
      EXPECT_TRUE(at::allclose(l->packed->dequantize(), theirs, 1e-5, 1e-6)) << l->name;
    }
  EXPECT_EQ(packed, 9);

  // Logits of the packed model (the sign kernels) equal those of the same
  // model with every DBF linear replaced by its dequantized float32 weight.
  qh::Model dense = qh::load_model(registry, out, at::kFloat);
  for (auto& b : dense.blocks())
    for (qh::Linear* l : b.linears())
      if (l->packed) {
        l->weight = l->packed->dequantize();
        l->packed.reset();
      }
  const at::Tensor ids = at::randint(1, 500, {2, 24}, at::kLong);
  const at::Tensor a = m.forward(ids), d = dense.forward(ids);
  EXPECT_LT((a - d).abs().max().item<double>(), 1e-4 * d.abs().max().item<double>());
  EXPECT_TRUE(at::equal(a.argmax(-1), d.argmax(-1)));

  // A malformed checkpoint is refused with one line naming the layer.
  const std::string layer = "model.layers.1.self_attn.q_proj";
  using Edit = std::function<void(std::vector<std::pair<std::string, at::Tensor>>&)>;
  const std::string bad = qforge::test::temp_path("qforge_dbf", "bad");
  auto refused = [&](const char* what, const Edit& edit) {
    std::filesystem::remove_all(bad);
    std::filesystem::copy(out, bad);
    const qh::TensorStore store(bad);
    for (const qh::SafetensorsFile* f : store.files()) {
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (const auto& [name, info] : f->tensors()) tensors.emplace_back(name, f->view(name).clone());
      if (std::none_of(tensors.begin(), tensors.end(),
                       [&](const auto& t) { return t.first.rfind(layer + ".", 0) == 0; }))
        continue;
      edit(tensors);
      const std::string path = f->path();
      qh::save_safetensors(path, tensors, f->metadata());
    }
    try {
      qh::load_model(registry, bad, at::kFloat);
      ADD_FAILURE() << what << ": accepted";
    } catch (const std::exception& e) {
      const std::string msg = e.what();
      std::printf("%s: %s\n", what, msg.c_str());
      EXPECT_NE(msg.find(layer), std::string::npos) << what << ": " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << what << ": " << msg;
    }
    std::filesystem::remove_all(bad);
  };
  auto find = [&](std::vector<std::pair<std::string, at::Tensor>>& t, const std::string& suffix) -> at::Tensor& {
    for (auto& [name, v] : t)
      if (name == layer + "." + suffix) return v;
    throw std::runtime_error("no " + suffix);
  };
  refused("a sign plane one byte short", [&](auto& t) {
    at::Tensor& v = find(t, "bp1");
    v = v.narrow(0, 0, v.size(0) - 1).clone();
  });
  refused("a missing scale", [&](auto& t) {  // gone from its shard and from the index
    t.erase(std::remove_if(t.begin(), t.end(), [&](const auto& p) { return p.first == layer + ".scaling0"; }),
            t.end());
    const std::string index = bad + "/model.safetensors.index.json";
    std::ifstream in(index);
    nlohmann::json j = nlohmann::json::parse(in);
    j["weight_map"].erase(layer + ".scaling0");
    std::ofstream(index) << j.dump();
  });
  refused("k inconsistent with the planes", [&](auto& t) {
    at::Tensor& v = find(t, "scaling2");
    v = at::cat({v, v.narrow(0, 0, 1)});
  });
  refused("a scale of the wrong length", [&](auto& t) {
    at::Tensor& v = find(t, "scaling4");
    v = v.narrow(0, 0, v.size(0) - 1).clone();
  });
  std::filesystem::remove_all(out);
}

}  // namespace
