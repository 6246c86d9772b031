#include <gtest/gtest.h>
TEST(Gptq, Placeholder) {}
