// org.qforge.affine.layer through the plugin ABI (loaded by the host registry,
// as the CLI loads it), on what the in-tree quantizers write in every format
// of the table: dequantize bit for bit; forward and backward_input against
// dequantize + a double matmul for one row (the packed kernels), a few rows,
// both sides of the kernel / GEMM cut-over, a large batch (dequantize +
// LibTorch GEMM), x of 1 to 3 dimensions, several dequantization blocks; and
// malformed tensors and metadata refused with an error, not a crash.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <qforge_host/base/errors.hpp>
#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "support/plugins.hpp"

namespace {

namespace qh = qforge::host;
using qforge::test::gaussian;
using qforge::test::Settings;

qh::Registry& registry() { return qforge::test::plugin_registry(); }

const qh::Component& layer_component() {
  const qh::Component* c = registry().find("org.qforge.affine.layer");
  if (c == nullptr)
    throw std::runtime_error("org.qforge.affine.layer not found" + qforge::test::plugin_refusals());
  return *c;
}

qh::QuantResult quantize(const std::string& method, const at::Tensor& w, const at::Tensor& bias,
                         const Settings& settings) {
  const qh::Component* c = registry().find(method);
  if (c == nullptr) throw std::runtime_error(method + " not found");
  const at::Tensor h =
      method == "org.qforge.gptq" ? qforge::test::synthetic_hessian(w.size(1), 5) : at::Tensor();
  return qforge::test::quantize(*c, w, h, settings, bias);
}

// max |got - ref| / (|a| |b| + 1e-30), elementwise, with ref = a b (+ bias)
// in double: the error relative to the sum of |products| of each output.
double relative_error(const at::Tensor& got, const at::Tensor& a, const at::Tensor& b,
                      const at::Tensor& bias) {
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  at::Tensor ref = ad.matmul(bd), mag = ad.abs().matmul(bd.abs());
  if (bias.defined()) {
    ref = ref + bias.to(at::kDouble);
    mag = mag + bias.to(at::kDouble).abs();
  }
  return ((got.to(at::kDouble) - ref).abs() / (mag + 1e-30)).max().item<double>();
}

TEST(AffineLayer, ConsumesEveryFormatOfTheTable) {
  const qh::Component& c = layer_component();
  ASSERT_NE(c.inference_layer(), nullptr);
  const char* const* formats = c.inference_layer()->formats;
  const auto& rows = qforge::kernels::affine_formats();
  ASSERT_GE(rows.size(), 2u);
  size_t k = 0;
  for (; formats[k] != nullptr; ++k) {
    ASSERT_LT(k, rows.size());
    EXPECT_STREQ(formats[k], rows[k]->id);
    EXPECT_EQ(registry().find_inference_layer(formats[k]), &c) << formats[k];
  }
  EXPECT_EQ(k, rows.size());
}

struct Case {
  const char* method;
  Settings settings;
};

TEST(AffineLayer, ForwardAndBackwardMatchDequantizedMatmul) {
  const int64_t out = 300, in = 520;  // neither a multiple of 16 nor of 32
  const at::Tensor w = gaussian({out, in}, 1);
  const at::Tensor bias = gaussian({out}, 2);
  const int64_t cut = qforge::kernels::aten::kGemvMaxRows;
  const std::vector<Case> cases = {
      {"org.qforge.rtn", {{"bits", "4"}, {"group_size", "128"}, {"sym", "false"}}},
      {"org.qforge.rtn", {{"bits", "3"}, {"group_size", "-1"}}},
      {"org.qforge.gptq", {{"bits", "4"}, {"group_size", "128"}}},
      {"org.qforge.gptq", {{"bits", "3"}, {"group_size", "32"}, {"desc_act", "true"}}},
      {"org.qforge.gptq", {{"bits", "2"}, {"group_size", "100"}, {"desc_act", "true"}}},
      {"org.qforge.gptq", {{"bits", "8"}, {"group_size", "64"}, {"sym", "false"}}},
  };
  for (const Case& c : cases) {
    for (bool with_bias : {true, false}) {
      std::string label = std::string(c.method) + (with_bias ? " bias" : " no bias");
      for (const auto& [k, v] : c.settings) label += " " + k + "=" + v;
      SCOPED_TRACE(label);
      const at::Tensor b = with_bias ? bias : at::Tensor();
      const qh::QuantResult r = quantize(c.method, w, b, c.settings);
      EXPECT_EQ(r.tensors.count("bias"), with_bias ? 1u : 0u);
      qh::PackedLayer layer(layer_component(), r);
      EXPECT_EQ(layer.out_features(), out);
      EXPECT_EQ(layer.in_features(), in);
      const at::Tensor wq = layer.dequantize();
      ASSERT_TRUE(at::equal(wq, r.dequantized)) << "dequantize must be bit-identical";
      uint32_t seed = 10;
      for (int64_t rows :
           {int64_t{1}, int64_t{2}, int64_t{8}, int64_t{9}, cut, cut + 1, int64_t{300}}) {
        SCOPED_TRACE("rows=" + std::to_string(rows));
        const at::Tensor x = gaussian({rows, in}, seed++);
        EXPECT_LE(relative_error(layer.forward(x), x, wq.t(), b), 1e-5);
        const at::Tensor gy = gaussian({rows, out}, seed++);
        EXPECT_LE(relative_error(layer.backward_input(gy), gy, wq, at::Tensor()), 1e-5);
      }
      // x of one to three dimensions: [..., in] -> [..., out].
      for (const std::vector<int64_t>& lead : std::vector<std::vector<int64_t>>{{}, {5}, {2, 3}}) {
        std::vector<int64_t> xs = lead, gs = lead;
        xs.push_back(in);
        gs.push_back(out);
        const at::Tensor x = gaussian(xs, seed++), gy = gaussian(gs, seed++);
        const at::Tensor y = layer.forward(x), gx = layer.backward_input(gy);
        ASSERT_EQ(y.sizes().vec(), gs);
        ASSERT_EQ(gx.sizes().vec(), xs);
        EXPECT_LE(relative_error(y.reshape({-1, out}), x.reshape({-1, in}), wq.t(), b), 1e-5);
        EXPECT_LE(relative_error(gx.reshape({-1, in}), gy.reshape({-1, out}), wq, at::Tensor()),
                  1e-5);
      }
    }
  }
}

TEST(AffineLayer, OverSeveralDequantizationBlocks) {
  // 600 x 2100 floats exceed the layer's 2^20-float dequantization block, so
  // large batches and backward run over two row blocks (499 + 101 rows);
  // 2100 = 16 * 128 + 52 also leaves a short last group.
  const int64_t out = 600, in = 2100;
  const at::Tensor w = gaussian({out, in}, 11);
  const at::Tensor bias = gaussian({out}, 12);
  for (const Case& c : std::vector<Case>{{"org.qforge.rtn", {{"bits", "4"}}},
                                         {"org.qforge.gptq", {{"desc_act", "true"}}}}) {
    SCOPED_TRACE(c.method);
    const qh::QuantResult r = quantize(c.method, w, bias, c.settings);
    qh::PackedLayer layer(layer_component(), r);
    EXPECT_TRUE(at::equal(layer.dequantize(), r.dequantized));
    for (int64_t rows : {1, 5, 300}) {
      const at::Tensor x = gaussian({rows, in}, 13);
      EXPECT_LE(relative_error(layer.forward(x), x, r.dequantized.t(), bias), 1e-5);
      const at::Tensor gy = gaussian({rows, out}, 14);
      EXPECT_LE(relative_error(layer.backward_input(gy), gy, r.dequantized, at::Tensor()), 1e-5);
    }
    EXPECT_EQ(layer.forward(at::zeros({0, in})).sizes(), (std::vector<int64_t>{0, out}));
  }
}

// Hugging Face GPTQ checkpoints store the bias in float16 (or bfloat16): the
// gptq/1 row takes it in those types too and the layer adds it in float32.
TEST(AffineLayer, TakesAHalfPrecisionGptqBias) {
  const int64_t out = 24, in = 96;
  const qh::QuantResult r = quantize("org.qforge.gptq", gaussian({out, in}, 95),
                                     gaussian({out}, 97), {{"bits", "4"}, {"group_size", "32"}});
  const at::Tensor x = gaussian({3, in}, 98);
  for (at::ScalarType type : {at::kHalf, at::kBFloat16}) {
    qh::QuantResult h = r;
    h.tensors["bias"] = r.tensors.at("bias").to(type);
    qh::PackedLayer layer(layer_component(), h);
    EXPECT_LE(relative_error(layer.forward(x), x, r.dequantized.t(), h.tensors.at("bias")), 1e-5)
        << at::toString(type);
  }
}

// Builds a layer from `bad` and expects an error (a PluginError), not a crash.
void expect_refused(const qh::QuantResult& bad, const std::string& what) {
  SCOPED_TRACE(what);
  try {
    qh::PackedLayer layer(layer_component(), bad);
    ADD_FAILURE() << "accepted: " << what;
  } catch (const qh::PluginError& e) {
    EXPECT_NE(std::string(e.what()), "") << what;
  }
}

// Variations of a good result.
struct Malformed {
  qh::QuantResult good;
  qh::QuantResult meta(const std::string& m) const {
    qh::QuantResult r = good;
    r.metadata = m;
    return r;
  }
  qh::QuantResult tensor(const std::string& name, const at::Tensor& t) const {
    qh::QuantResult r = good;
    r.tensors[name] = t;
    return r;
  }
  qh::QuantResult without(const std::string& name) const {
    qh::QuantResult r = good;
    r.tensors.erase(name);
    return r;
  }
  const at::Tensor& operator[](const std::string& name) const { return good.tensors.at(name); }
};

TEST(AffineLayer, RefusesMalformedRtn) {
  const Malformed m{quantize("org.qforge.rtn", gaussian({16, 70}, 3), gaussian({16}, 4),
                             {{"bits", "3"}, {"group_size", "32"}})};
  EXPECT_NO_THROW(qh::PackedLayer(layer_component(), m.good));
  const std::string tail = R"(,"in_features":70,"out_features":16})";
  for (const auto& [meta, what] : std::vector<std::pair<std::string, std::string>>{
           {"{not json", "unparsable metadata"},
           {"[1, 2]", "metadata not an object"},
           {R"({"group_size":32,"sym":true)" + tail, "bits missing"},
           {R"({"bits":9,"group_size":32,"sym":true)" + tail, "bits out of range"},
           {R"({"bits":"3","group_size":32,"sym":true)" + tail, "bits not an integer"},
           {R"({"bits":3,"group_size":0,"sym":true)" + tail, "group_size 0"},
           {R"({"bits":3,"group_size":32)" + tail, "sym missing"},
           {R"({"bits":3,"group_size":32,"sym":1)" + tail, "sym not a boolean"},
           {R"({"bits":3,"group_size":16,"sym":true)" + tail, "group_size disagrees with scales"},
           {R"({"bits":4,"group_size":32,"sym":true)" + tail, "bits disagrees with qweight"},
           {R"({"bits":3,"group_size":32,"sym":true,"in_features":80,"out_features":16})",
            "in_features disagrees with qweight"},
           {R"({"bits":3,"group_size":32,"sym":true,"in_features":70,"out_features":8})",
            "out_features disagrees with the tensors"},
           {R"({"bits":3,"group_size":32,"sym":true,"in_features":70,)"
            R"("out_features":18446744073709551615})",
            "huge out_features"}})
    expect_refused(m.meta(meta), what);
  const at::Tensor& qw = m["qweight"];
  expect_refused(m.tensor("qweight", qw.narrow(1, 0, qw.size(1) - 1).contiguous()),
                 "truncated qweight");
  expect_refused(m.tensor("qweight", qw.reshape({-1})), "flattened qweight");
  expect_refused(m.tensor("qweight", qw.to(at::kLong)), "qweight int64");
  expect_refused(m.tensor("scales", m["scales"].narrow(1, 0, 2).contiguous()), "scales too narrow");
  expect_refused(m.tensor("scales", m["scales"].to(at::kDouble)), "scales float64");
  expect_refused(m.tensor("zeros", m["zeros"].to(at::kInt)), "zeros int32");
  expect_refused(m.tensor("zeros", at::full_like(m["zeros"], 8)), "zeros above maxq");
  expect_refused(m.tensor("bias", at::zeros({15})), "bias of the wrong length");
  expect_refused(m.tensor("bias", at::zeros({16}, at::kHalf)), "bias float16");
  expect_refused(m.tensor("extra", at::zeros({1})), "unknown tensor");
  for (const char* name : {"qweight", "scales", "zeros"})
    expect_refused(m.without(name), std::string(name) + " missing");
}

TEST(AffineLayer, RefusesMalformedGptq) {
  const Malformed m{quantize("org.qforge.gptq", gaussian({16, 70}, 91), gaussian({16}, 93),
                             {{"bits", "3"}, {"group_size", "32"}, {"desc_act", "true"}})};
  EXPECT_NO_THROW(qh::PackedLayer(layer_component(), m.good));
  const std::string tail = R"(,"in_features":70,"out_features":16})";
  for (const auto& [meta, what] : std::vector<std::pair<std::string, std::string>>{
           {"{not json", "unparsable metadata"},
           {"[1, 2]", "metadata not an object"},
           {R"({"group_size":32)" + tail, "bits missing"},
           {R"({"bits":9,"group_size":32)" + tail, "bits out of range"},
           {R"({"bits":"3","group_size":32)" + tail, "bits not an integer"},
           {R"({"bits":3,"group_size":0)" + tail, "group_size 0"},
           {R"({"bits":3,"group_size":16)" + tail, "group_size vs scales"},
           {R"({"bits":4,"group_size":32)" + tail, "bits vs qweight"},
           {R"({"bits":3,"group_size":32,"desc_act":"yes")" + tail, "desc_act not a boolean"},
           {R"({"bits":3,"group_size":32,"checkpoint_format":"gptq_v2")" + tail,
            "v2 checkpoint format"},
           {R"({"bits":3,"group_size":32,"in_features":70,"out_features":15})",
            "out_features vs tensors"},
           {R"({"bits":3,"group_size":32,"in_features":71,"out_features":16})",
            "in_features vs g_idx"},
           {R"({"bits":3,"group_size":32,"in_features":70,)"
            R"("out_features":18446744073709551615})",
            "huge out_features"}})
    expect_refused(m.meta(meta), what);
  const at::Tensor &qw = m["qweight"], &qz = m["qzeros"], &sc = m["scales"], &gi = m["g_idx"];
  expect_refused(m.tensor("qweight", qw.narrow(0, 0, qw.size(0) - 1).contiguous()),
                 "truncated qweight");
  expect_refused(m.tensor("qweight", qw.t().contiguous()), "qweight transposed");
  expect_refused(m.tensor("qweight", qw.to(at::kLong)), "qweight int64");
  expect_refused(m.tensor("qzeros", qz.narrow(0, 0, 2).contiguous()), "qzeros too short");
  expect_refused(m.tensor("qzeros", qz.to(at::kShort)), "qzeros int16");
  expect_refused(m.tensor("scales", sc.to(at::kFloat)), "scales float32");
  expect_refused(m.tensor("scales", sc.narrow(1, 0, 15).contiguous()), "scales too narrow");
  expect_refused(m.tensor("scales", at::full_like(sc, INFINITY)), "scales infinite");
  expect_refused(m.tensor("g_idx", gi.to(at::kLong)), "g_idx int64");
  expect_refused(m.tensor("g_idx", gi.narrow(0, 0, 69).contiguous()), "g_idx too short");
  expect_refused(m.tensor("g_idx", at::full_like(gi, 3)), "g_idx past the groups");
  expect_refused(m.tensor("g_idx", at::full_like(gi, -1)), "g_idx negative");
  expect_refused(m.tensor("bias", at::zeros({15})), "bias of the wrong length");
  expect_refused(m.tensor("bias", at::zeros({16}, at::kInt)), "bias int32");
  expect_refused(m.tensor("bias", at::zeros({16}, at::kDouble)), "bias float64");
  expect_refused(m.tensor("extra", at::zeros({1})), "unknown tensor");
  for (const char* name : {"qweight", "qzeros", "scales", "g_idx"})
    expect_refused(m.without(name), std::string(name) + " missing");
}

TEST(AffineLayer, RefusesAFormatNotInTheTable) {
  qh::QuantResult r = quantize("org.qforge.rtn", gaussian({16, 64}, 6), at::Tensor(), {});
  for (const char* format : {"org.qforge.rtn/2", "org.example.other/1"}) {
    r.format = format;
    try {
      qh::PackedLayer layer(layer_component(), r);
      ADD_FAILURE() << "accepted " << format;
    } catch (const qh::PluginError& e) {
      EXPECT_EQ(e.code(), QFORGE_STATUS_UNSUPPORTED) << e.what();
    }
  }
}

}  // namespace
