// The native SentencePiece tokenizer against libsentencepiece itself, on the
// stories260K model and on BPE models trained here with other options
// (no byte fallback, user-defined symbols, no dummy prefix, whitespace kept).
// This binary is built without LibTorch: libsentencepiece's bundled protobuf
// cannot share a process with LibTorch's (see tokenizer_sentencepiece.cpp).
#include <gtest/gtest.h>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <random>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "shared_data.hpp"

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;

namespace {

std::vector<std::string> crafted_texts() {
  return {"",
          " ",
          "   ",
          "a",
          " a",
          "a ",
          "  leading and trailing  ",
          "many     spaces   inside",
          "Once upon a time",
          "\n",
          "line one\nline two\n\nline four",
          "\ttab\t",
          "a\xFF" "b",           // ill-formed byte
          "\xE2\x82",            // truncated sequence
          "\xED\xA0\x80",        // surrogate
          "\xC0\xAF",            // overlong
          "caf\xC3\xA9 na\xC3\xAFve",
          "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E",  // 日本語
          "\xF0\x9F\x98\x80 emoji",
          "\xC2\xA0nbsp",
          "\xE2\x96\x81" "already escaped\xE2\x96\x81",
          "<s> </s> <unk> <0x41>",
          "xyz<sep>xyzxyz <sep>",
          std::string("nul\0inside", 10),
          "Lily said, \"Look!\" and ran -- fast... 123 4567"};
}

std::vector<std::string> random_texts(int n, uint32_t seed) {
  const std::vector<std::string> alphabet = {
      " ", " ", " ", "a", "e", "t", "h", "s", "o", "n", "\n", "\t", ".", ",", "xyz", "<sep>",
      "\xC3\xA9", "\xE2\x96\x81", "\xFF", "\xE6\x97\xA5", "<", ">", "the", " the", "1", "\xF0\x9F\x98\x80"};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (int k = 0; k < n; ++k) {
    std::string s;
    int len = static_cast<int>(rng() % 24);
    for (int i = 0; i < len; ++i) s += alphabet[rng() % alphabet.size()];
    out.push_back(s);
  }
  return out;
}

// Encodes and decodes every text with both; returns the number compared.
int compare(const std::string& model, const std::vector<std::string>& texts) {
  sentencepiece::SentencePieceProcessor ref;
  auto status = ref.Load(model);
  EXPECT_TRUE(status.ok()) << status.ToString();
  if (!status.ok()) return 0;
  auto ours = qforge::host::load_sentencepiece_tokenizer(model);
  EXPECT_EQ(ours->vocab_size(), ref.GetPieceSize());
  EXPECT_EQ(ours->bos_id(), ref.bos_id());
  EXPECT_EQ(ours->eos_id(), ref.eos_id());
  int n = 0;
  for (const auto& text : texts) {
    std::vector<int> want;
    EXPECT_TRUE(ref.Encode(text, &want).ok());
    Ids got = ours->encode(text, false);
    EXPECT_EQ(got, Ids(want.begin(), want.end())) << "text: " << testing::PrintToString(text);
    // Decoding, without control and unknown ids (which ours drops).
    std::vector<int> kept;
    for (int id : want)
      if (!ref.IsControl(id) && !ref.IsUnknown(id)) kept.push_back(id);
    std::string ref_text;
    EXPECT_TRUE(ref.Decode(kept, &ref_text).ok());
    EXPECT_EQ(ours->decode(got), ref_text) << "text: " << testing::PrintToString(text);
    ++n;
  }
  // Random id sequences, byte pieces included.
  std::mt19937 rng(11);
  for (int k = 0; k < 300; ++k) {
    std::vector<int> ids;
    int len = static_cast<int>(rng() % 12);
    for (int i = 0; i < len; ++i) {
      int id = static_cast<int>(rng() % ref.GetPieceSize());
      if (!ref.IsControl(id) && !ref.IsUnknown(id)) ids.push_back(id);
    }
    std::string ref_text;
    EXPECT_TRUE(ref.Decode(ids, &ref_text).ok());
    EXPECT_EQ(ours->decode(Ids(ids.begin(), ids.end())), ref_text)
        << "ids: " << testing::PrintToString(ids);
  }
  return n;
}

std::vector<std::string> lines_of(const std::string& text, size_t max_lines) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size() && out.size() < max_lines) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    out.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

TEST(SentencePieceOracle, Stories260K) {
  QFORGE_REQUIRE_SHARED("models/stories260K/tokenizer.model");
  QFORGE_REQUIRE_SHARED("data/wikitext2_test.raw");
  std::string model = qforge_test::shared_path("models/stories260K/tokenizer.model");
  std::vector<std::string> texts = crafted_texts();
  for (auto& t : random_texts(3000, 1)) texts.push_back(t);
  // WikiText-2 (CRLF lines, Unicode punctuation and names), line by line and
  // in 16 KB blocks; TinyStories V2 in 4 KB blocks.
  std::string wiki = qforge_test::read_bytes(qforge_test::shared_path("data/wikitext2_test.raw"));
  for (auto& l : lines_of(wiki, 3000)) texts.push_back(l);
  for (size_t pos = 0; pos < wiki.size(); pos += 16384) texts.push_back(wiki.substr(pos, 16384));
  std::string v2 = qforge_test::read_bytes(qforge_test::shared_path("data/tinystories_v2_valid_100.txt"));
  for (size_t pos = 0; pos < v2.size(); pos += 4096) texts.push_back(v2.substr(pos, 4096));
  int n = compare(model, texts);
  std::printf("stories260K: %d texts compared with libsentencepiece\n", n);
}

std::string train_dir() {
  return (fs::temp_directory_path() / ("qforge_spm_" + std::to_string(::getpid()))).string();
}

// Trains a small model with `options` on TinyStories text (in train_dir()).
std::string train(const std::string& name, const std::string& options) {
  std::string dir = train_dir();
  fs::create_directories(dir);
  std::string input = dir + "/input.txt";
  if (!fs::exists(input)) {
    std::string text = qforge_test::read_bytes(qforge_test::shared_path("data/tinystories_valid.txt"));
    std::ofstream(input, std::ios::binary) << text.substr(0, 300000) << "\ncaf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC\n";
  }
  std::string prefix = dir + "/" + name;
  auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + input + " --model_prefix=" + prefix +
      " --vocab_size=400 --minloglevel=2 --num_threads=1 " + options);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return prefix + ".model";
}

const std::vector<std::pair<std::string, std::string>> kTrainings = {
    {"bpe_plain", "--model_type=bpe --normalization_rule_name=identity"},
    {"bpe_bytes_userdef",
     "--model_type=bpe --normalization_rule_name=identity --byte_fallback=true "
     "--user_defined_symbols=<sep>,xyz --character_coverage=0.99"},
    {"bpe_no_prefix_keep_spaces",
     "--model_type=bpe --normalization_rule_name=identity --add_dummy_prefix=false "
     "--remove_extra_whitespaces=false"},
    {"bpe_whitespace_pieces",
     "--model_type=bpe --normalization_rule_name=identity --character_coverage=0.98 "
     "--allow_whitespace_only_pieces=true --remove_extra_whitespaces=false --split_digits=true "
     "--byte_fallback=true"},
};

TEST(SentencePieceOracle, TrainedModels) {
  QFORGE_REQUIRE_SHARED("data/tinystories_valid.txt");
  QFORGE_REQUIRE_SHARED("data/wikitext2_test.raw");
  std::string wiki = qforge_test::read_bytes(qforge_test::shared_path("data/wikitext2_test.raw"));
  std::vector<std::string> texts = crafted_texts();
  for (auto& t : random_texts(2000, 2)) texts.push_back(t);
  for (auto& l : lines_of(wiki, 1500)) texts.push_back(l);
  for (const auto& [name, options] : kTrainings) {
    SCOPED_TRACE(name);
    int n = compare(train(name, options), texts);
    std::printf("%s: %d texts compared with libsentencepiece\n", name.c_str(), n);
  }
  fs::remove_all(train_dir());
}

TEST(SentencePieceOracle, UnsupportedModelsAreRefused) {
  QFORGE_REQUIRE_SHARED("data/tinystories_valid.txt");
  for (const auto& [name, options, expect] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"unigram", "--model_type=unigram --normalization_rule_name=identity", "unigram"},
           {"nfkc", "--model_type=bpe --normalization_rule_name=nmt_nfkc", "normalization"}}) {
    std::string model = train(name, options);
    std::string msg;
    try {
      qforge::host::load_sentencepiece_tokenizer(model);
    } catch (const qforge::host::UsageError& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(expect), std::string::npos) << name << ": " << msg;
    EXPECT_NE(msg.find(model), std::string::npos) << msg;
  }
  fs::remove_all(train_dir());
}

}  // namespace
