// The RTN and GPTQ inference layers through the plugin ABI (loaded by the
// host registry, as the CLI loads them): forward and backward_input against
// dequantize + a double matmul, for one row (the packed kernels), a few rows,
// both sides of the kernel / GEMM cut-over and a large batch (dequantize +
// LibTorch GEMM).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <qforge_host/plugins/params.hpp>
#include <qforge_host/plugins/abi_bridge.hpp>
#include <qforge_host/plugins/registry.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include "../support/plugins.hpp"

#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

namespace qh = qforge::host;
using Settings = std::map<std::string, std::string>;

qh::Registry& registry() { return qforge::test::plugin_registry(); }

using qforge::test::gaussian;

// A positive definite 2/n XᵀX with uneven column scales.
at::Tensor hessian(int64_t in, uint32_t seed) {
  const at::Tensor x = gaussian({2 * in, in}, seed) * at::exp(gaussian({in}, seed + 1));
  return (x.t().mm(x) * (1.0 / in)).contiguous();
}

qh::QuantResult quantize(const std::string& method, const at::Tensor& w, const at::Tensor& bias,
                         const Settings& settings) {
  const qh::Component* c = registry().find(method);
  EXPECT_NE(c, nullptr) << method;
  qh::ParamValues params(c->desc->id, c->desc->params, c->desc->param_count, settings);
  qh::QuantizeRequest req;
  req.layer_name = "test.layer";
  req.weight = w;
  req.bias = bias;
  if (method == "org.qforge.gptq") {
    req.hessian = hessian(w.size(1), 5);
    req.nsamples = 1;
  }
  return qh::quantize_layer(*c, req, params);
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

struct Case {
  const char* method;
  Settings settings;
};

TEST(PackedLayers, ForwardAndBackwardMatchDequantizedMatmul) {
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
    std::string label = c.method;
    for (const auto& [k, v] : c.settings) label += " " + k + "=" + v;
    SCOPED_TRACE(label);
    const qh::QuantResult r = quantize(c.method, w, bias, c.settings);
    const qh::Component* layer_component = registry().find_inference_layer(r.format);
    ASSERT_NE(layer_component, nullptr) << r.format;
    qh::PackedLayer layer(*layer_component, r);
    const at::Tensor wq = layer.dequantize();
    ASSERT_TRUE(at::equal(wq, r.dequantized)) << "dequantize must be bit-identical";
    uint32_t seed = 10;
    for (int64_t rows : {int64_t{1}, int64_t{2}, int64_t{8}, int64_t{9}, cut, cut + 1,
                         int64_t{300}}) {
      SCOPED_TRACE("rows=" + std::to_string(rows));
      const at::Tensor x = gaussian({rows, in}, seed++);
      EXPECT_LE(relative_error(layer.forward(x), x, wq.t(), bias), 1e-5);
      const at::Tensor gy = gaussian({rows, out}, seed++);
      EXPECT_LE(relative_error(layer.backward_input(gy), gy, wq, at::Tensor()), 1e-5);
    }
  }
}

}  // namespace
