// A host of ABI 1.0: the registry's own sources compiled against the frozen
// copy of the v1.0 headers (v1_0/include). It must refuse a component that
// needs minor 1 (the C post-process) with one line naming the minor, and
// still load a v1.0 plugin beside it.
#include <gtest/gtest.h>

#include <string>

#include "qforge_host/plugins/registry.hpp"

static_assert(QFORGE_ABI_MINOR == 0, "this test must see the frozen v1.0 headers");

namespace {

std::string dir(const char* name) { return std::string(QFORGE_TEST_PLUGIN_DIR) + "/" + name; }

TEST(HostOfAbi1_0, RefusesAPluginThatNeedsMinor1WithOneLineAndLoadsTheRest) {
  qforge::host::Registry registry;
  registry.use_default_directories(false);
  registry.add_directory(dir("c_postprocess"));
  registry.add_directory(dir("c_plugin_v1_0"));
  registry.load();
  EXPECT_EQ(registry.find("org.qforge.test.rank1-lora"), nullptr);
  EXPECT_NE(registry.find("org.qforge.test.sign"), nullptr);
  ASSERT_EQ(registry.refusals().size(), 1u);
  const std::string reason = registry.refusals()[0].reason;
  EXPECT_NE(reason.find("org.qforge.test.rank1-lora"), std::string::npos) << reason;
  EXPECT_NE(reason.find("minor 1"), std::string::npos) << reason;
  EXPECT_NE(reason.find("1.0"), std::string::npos) << reason;
  EXPECT_EQ(reason.find('\n'), std::string::npos) << reason;
}

}  // namespace
