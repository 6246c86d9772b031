// Locating ../shared test data: QFORGE_SHARED overrides the configured path.
// A missing file fails the test under CI=true and skips it otherwise.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace qforge::test {

inline std::string shared_dir() {
  const char* env = std::getenv("QFORGE_SHARED");
  return env && *env ? env : QFORGE_TEST_SHARED_DIR;
}

inline bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

}  // namespace qforge::test

// Use at the top of a test: binds `var` to the shared path `rel` or fails/skips.
#define QFORGE_REQUIRE_SHARED(var, rel)                                                  \
  std::string var = qforge::test::shared_dir() + "/" + (rel);                            \
  if (!std::filesystem::exists(var)) {                                                   \
    if (qforge::test::in_ci()) FAIL() << "shared test data missing (CI=true): " << var; \
    GTEST_SKIP() << "shared test data missing: " << var;                                 \
  }
