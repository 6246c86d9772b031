// Test support: the in-tree plugins of this build tree, loaded once per test
// process (QFORGE_TEST_BUILD_DIR is compiled in by qforge_gtest), one layer
// through a quantizer, seeded inputs, and small file helpers.
#pragma once

#include <unistd.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "qforge_host/plugins/registry.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"

namespace qforge::test {

inline host::Registry& plugin_registry() {
  static host::Registry* r = [] {
    auto* reg = new host::Registry();
    reg->use_default_directories(false);
    reg->add_directory(std::string(QFORGE_TEST_BUILD_DIR) + "/lib/qforge/plugins");
    reg->load();
    return reg;
  }();
  return *r;
}

// "\n  library: reason" for every library the registry refused.
inline std::string plugin_refusals() {
  std::string text;
  for (const auto& r : plugin_registry().refusals()) text += "\n  " + r.library + ": " + r.reason;
  return text;
}

using Settings = std::map<std::string, std::string>;

// Quantizes one layer with quantizer `c` through the host, as the pipeline
// does; `h` may be undefined (no calibration).
inline host::QuantResult quantize(const host::Component& c, const at::Tensor& w,
                                  const at::Tensor& h, const Settings& settings,
                                  const at::Tensor& bias = at::Tensor()) {
  host::ParamValues params(c.desc->id, c.desc->params, c.desc->param_count, settings);
  host::QuantizeRequest req;
  req.layer_name = "test.layer";
  req.weight = w;
  req.bias = bias;
  req.hessian = h;
  req.nsamples = h.defined() ? 1 : 0;
  return host::quantize_layer(c, req, params);
}

// A fresh (removed) path in the temporary directory, unique to this process.
inline std::string temp_path(const std::string& prefix, const std::string& name) {
  std::filesystem::path p = std::filesystem::temp_directory_path() /
                            (prefix + "_" + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(p);
  return p.string();
}

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A float32 tensor of N(0, 1) draws from a seeded std::mt19937 (the same
// values on every platform LibTorch's generators may differ on).
inline at::Tensor gaussian(std::vector<int64_t> shape, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  at::Tensor t = at::empty(shape, at::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t k = 0; k < t.numel(); ++k) p[k] = dist(rng);
  return t;
}

// H = 2/n XᵀX for n samples (4 in by default) of correlated inputs with
// uneven scales (so that act-order matters).
inline at::Tensor synthetic_hessian(int64_t in, uint32_t seed, int64_t n = 0) {
  if (n == 0) n = 4 * in;
  const at::Tensor z = gaussian({n, in}, seed);
  const at::Tensor mix =
      at::eye(in) + 0.3 * gaussian({in, in}, seed + 1) / std::sqrt(static_cast<double>(in));
  const at::Tensor x = z.mm(mix) * at::exp(gaussian({in}, seed + 2));
  return (x.t().mm(x) * (2.0 / n)).contiguous();
}

}  // namespace qforge::test
