// Test support: the in-tree plugins of this build tree, loaded once per test
// process (QFORGE_TEST_BUILD_DIR is compiled in by qforge_gtest), and small
// file helpers.
#pragma once

#include <unistd.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "qforge_host/plugins/registry.hpp"

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

}  // namespace qforge::test
