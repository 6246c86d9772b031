// Tokenizer speed on tinystories_valid.txt (~800 KB): load time, a first
// encode (cold word cache) and a second one (warm), for each tokenizer.
// Prints the figures; asserts only that the encodes agree.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "qforge_host/tokenizer/tokenizer.hpp"
#include "shared_data.hpp"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void bench(const std::string& rel) {
  QFORGE_REQUIRE_SHARED(rel);
  QFORGE_REQUIRE_SHARED("data/tinystories_valid.txt");
  std::string text = qforge_test::read_bytes(qforge_test::shared_path("data/tinystories_valid.txt"));
  auto t0 = std::chrono::steady_clock::now();
  auto tok = qforge::host::load_tokenizer(qforge_test::shared_path(rel));
  double load = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  auto cold = tok->encode(text, false);
  double first = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  auto warm = tok->encode(text, false);
  double second = seconds_since(t0);
  EXPECT_EQ(cold, warm);
  double mb = text.size() / 1e6;
  std::printf(
      "%-28s load %7.1f ms | encode %.2f MB -> %zu ids: first %7.1f ms (%6.1f MB/s), "
      "second %7.1f ms (%6.1f MB/s)\n",
      rel.c_str(), load * 1e3, mb, cold.size(), first * 1e3, mb / first, second * 1e3,
      mb / second);
}

TEST(TokenizerBench, SentencePieceStories260K) { bench("models/stories260K"); }
TEST(TokenizerBench, Llama3) { bench("tokenizers/llama3"); }
TEST(TokenizerBench, Qwen3) { bench("tokenizers/qwen3"); }

}  // namespace
