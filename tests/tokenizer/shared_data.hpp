// Locating the shared test data: $QFORGE_SHARED, else the compiled-in
// QFORGE_TEST_SHARED_DIR. Missing data fails the test when CI=true and skips
// it otherwise.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace qforge_test {

inline std::string shared_dir() {
  const char* env = std::getenv("QFORGE_SHARED");
  return env && *env ? env : QFORGE_TEST_SHARED_DIR;
}

inline bool on_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

inline std::string shared_path(const std::string& rel) { return shared_dir() + "/" + rel; }

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace qforge_test

// In a TEST body: fails (CI=true) or skips when a shared file is missing.
#define QFORGE_REQUIRE_SHARED(rel)                                                      \
  do {                                                                                  \
    std::string qforge_path_ = qforge_test::shared_path(rel);                           \
    if (!std::filesystem::exists(qforge_path_)) {                                       \
      if (qforge_test::on_ci()) FAIL() << "shared test data missing: " << qforge_path_; \
      GTEST_SKIP() << "shared test data missing: " << qforge_path_                      \
                   << " (set QFORGE_SHARED)";                                           \
    }                                                                                   \
  } while (0)
