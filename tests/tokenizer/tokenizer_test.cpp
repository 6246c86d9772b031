// Tokenizers: SentencePiece against the stories260K reference and the
// pre-tokenized TinyStories streams; Hugging Face byte-level BPE against the
// Qwen3 and Llama 3 golden encodings; the pieces of the tokenizer.json
// pipeline on small synthetic files; and the refusal of malformed files.
#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "shared_data.hpp"

using nlohmann::json;
using qforge::host::Tokenizer;
using qforge::host::UsageError;
using Ids = std::vector<int32_t>;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> read_u16(const std::string& path) {
  std::string bytes = qforge_test::read_bytes(path);
  std::vector<int32_t> ids(bytes.size() / 2);
  for (size_t k = 0; k < ids.size(); ++k)
    ids[k] = static_cast<unsigned char>(bytes[2 * k]) |
             (static_cast<unsigned char>(bytes[2 * k + 1]) << 8);
  return ids;
}

std::string strip(const std::string& s) {  // Python's str.strip() for ASCII whitespace
  const char* ws = " \t\n\r\f\v";
  size_t a = s.find_first_not_of(ws);
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(ws);
  return s.substr(a, b - a + 1);
}

// The message of the UsageError `f` throws ("" when it throws none).
template <typename F>
std::string usage_error(F&& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

struct TempFile {
  explicit TempFile(const std::string& name, const std::string& content) {
    path = (fs::temp_directory_path() /
            ("qforge_tok_" + std::to_string(::getpid()) + "_" + name)).string();
    std::ofstream(path, std::ios::binary) << content;
  }
  ~TempFile() { std::remove(path.c_str()); }
  std::string path;
};

// --------------------------------------------------------- SentencePiece --

const char* kStories = "models/stories260K";

TEST(SentencePiece, Stories260KPrompt) {
  QFORGE_REQUIRE_SHARED(kStories);
  auto tok = qforge::host::load_tokenizer(qforge_test::shared_path(kStories));
  json ref = json::parse(qforge_test::read_bytes(qforge_test::shared_path(
      std::string(kStories) + "/reference.json")));
  std::string prompt = ref["greedy_prompt"]["prompt"];
  Ids want = ref["greedy_prompt"]["prompt_ids"].get<Ids>();
  EXPECT_EQ(want, (Ids{1, 403, 407, 261, 378}));
  EXPECT_EQ(tok->encode(prompt, true), want);
  EXPECT_EQ(tok->encode(prompt, false), Ids(want.begin() + 1, want.end()));
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->piece(1), "<s>");
  EXPECT_EQ(tok->decode(want), prompt);
  EXPECT_EQ(tok->decode(want, /*skip_special=*/false), "<s>" + prompt);
  EXPECT_NE(usage_error([&] { tok->piece(512); }), "");
  EXPECT_NE(usage_error([&] { tok->piece(-1); }), "");
  // The same file named directly.
  auto direct = qforge::host::load_tokenizer(
      qforge_test::shared_path(std::string(kStories) + "/tokenizer.model"));
  EXPECT_EQ(direct->encode(prompt, true), want);
}

TEST(SentencePiece, TinyStoriesValidStream) {
  QFORGE_REQUIRE_SHARED("data/tinystories_valid.tok512.u16");
  QFORGE_REQUIRE_SHARED(kStories);
  auto tok = qforge::host::load_tokenizer(qforge_test::shared_path(kStories));
  std::string text = qforge_test::read_bytes(qforge_test::shared_path("data/tinystories_valid.txt"));
  Ids want = read_u16(qforge_test::shared_path("data/tinystories_valid.tok512.u16"));
  ASSERT_EQ(want.size(), 393013u);
  Ids got = tok->encode(text, /*add_special=*/true);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);
}

TEST(SentencePiece, TinyStoriesV2Valid100Stream) {
  QFORGE_REQUIRE_SHARED("data/tinystories_v2_valid_100.tok512.u16");
  QFORGE_REQUIRE_SHARED(kStories);
  auto tok = qforge::host::load_tokenizer(qforge_test::shared_path(kStories));
  std::string text =
      qforge_test::read_bytes(qforge_test::shared_path("data/tinystories_v2_valid_100.txt"));
  Ids want = read_u16(qforge_test::shared_path("data/tinystories_v2_valid_100.tok512.u16"));
  ASSERT_EQ(want.size(), 39344u);
  // SOURCES.md: split on <|endoftext|>, strip, drop empty, concat [1] + encode(story).
  const std::string sep = "<|endoftext|>";
  Ids got;
  int stories = 0;
  for (size_t pos = 0;;) {
    size_t next = text.find(sep, pos);
    std::string story = strip(text.substr(pos, next == std::string::npos ? std::string::npos : next - pos));
    if (!story.empty()) {
      Ids ids = tok->encode(story, /*add_special=*/true);
      got.insert(got.end(), ids.begin(), ids.end());
      ++stories;
    }
    if (next == std::string::npos) break;
    pos = next + sep.size();
  }
  EXPECT_EQ(stories, 100);
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(got == want);
}

TEST(SentencePiece, GarbageFilesAreUsageErrors) {
  std::mt19937 rng(7);
  std::string random(4096, '\0');
  for (auto& c : random) c = static_cast<char>(rng());
  for (const auto& [name, content] :
       std::vector<std::pair<std::string, std::string>>{{"random.model", random},
                                                       {"empty.model", ""},
                                                       {"text.model", "hello, world\n"},
                                                       {"json.model", "{\"model\": {}}"}}) {
    TempFile f(name, content);
    std::string msg = usage_error([&] { qforge::host::load_tokenizer(f.path); });
    EXPECT_NE(msg.find(f.path), std::string::npos) << name << ": " << msg;
  }
}

TEST(Loader, MissingPathsAreUsageErrors) {
  std::string msg = usage_error([] { qforge::host::load_tokenizer("/nonexistent/tokenizer.json"); });
  EXPECT_NE(msg.find("/nonexistent/tokenizer.json"), std::string::npos) << msg;
  fs::path dir = fs::temp_directory_path() / ("qforge_tok_empty_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  msg = usage_error([&] { qforge::host::load_tokenizer(dir.string()); });
  EXPECT_NE(msg.find("no tokenizer.json or tokenizer.model"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(Loader, UnsupportedTokenizerJsonFallsBackToTokenizerModel) {
  QFORGE_REQUIRE_SHARED(kStories);
  fs::path dir = fs::temp_directory_path() / ("qforge_tok_llama2_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  fs::copy_file(qforge_test::shared_path(std::string(kStories) + "/tokenizer.model"),
                dir / "tokenizer.model", fs::copy_options::overwrite_existing);
  // A Llama 2 style tokenizer.json (Metaspace pipeline): refused, so the
  // directory's tokenizer.model is used.
  std::ofstream(dir / "tokenizer.json") << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}})";
  auto tok = qforge::host::load_tokenizer(dir.string());
  EXPECT_EQ(tok->encode("Once upon a time", true), (Ids{1, 403, 407, 261, 378}));
  // Without a tokenizer.model the refusal is the error.
  fs::remove(dir / "tokenizer.model");
  std::string msg = usage_error([&] { qforge::host::load_tokenizer(dir.string()); });
  EXPECT_NE(msg.find("Metaspace"), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir / "tokenizer.json").string()), std::string::npos) << msg;
  fs::remove_all(dir);
}

// ------------------------------------------------- Hugging Face goldens --

void check_golden(const std::string& name) {
  std::string dir = qforge_test::shared_path("tokenizers/" + name);
  auto tok = qforge::host::load_tokenizer(dir);
  json golden = json::parse(qforge_test::read_bytes(dir + "/golden.json"));
  int matched = 0, total = 0;
  for (const auto& c : golden["cases"]) {
    std::string text = c["text"];
    Ids want = c["ids"].get<Ids>();
    Ids got = tok->encode(text, /*add_special=*/false);
    ++total;
    if (got == want) ++matched;
    EXPECT_EQ(got, want) << name << ": " << json(text).dump();
    EXPECT_EQ(tok->decode(got, /*skip_special=*/false), text) << name << ": " << json(text).dump();
  }
  std::printf("%s: %d/%d golden cases match\n", name.c_str(), matched, total);
  EXPECT_GT(total, 0);
}

TEST(HuggingFace, Qwen3Golden) {
  QFORGE_REQUIRE_SHARED("tokenizers/qwen3/golden.json");
  check_golden("qwen3");
}

TEST(HuggingFace, Llama3Golden) {
  QFORGE_REQUIRE_SHARED("tokenizers/llama3/golden.json");
  check_golden("llama3");
}

TEST(HuggingFace, Llama3SpecialTokens) {
  QFORGE_REQUIRE_SHARED("tokenizers/llama3/tokenizer.json");
  std::string dir = qforge_test::shared_path("tokenizers/llama3");
  auto tok = qforge::host::load_tokenizer(dir);
  EXPECT_EQ(tok->bos_id(), 128000);
  EXPECT_EQ(tok->eos_id(), 128001);
  EXPECT_EQ(tok->vocab_size(), 128256);
  Ids plain = tok->encode("Hello, world!", false);
  Ids with = tok->encode("Hello, world!", true);
  ASSERT_EQ(with.size(), plain.size() + 1);
  EXPECT_EQ(with[0], 128000);
  EXPECT_EQ(tok->decode(with), "Hello, world!");
  EXPECT_EQ(tok->decode(with, false), "<|begin_of_text|>Hello, world!");
  EXPECT_EQ(tok->piece(9906), "Hello");
  EXPECT_EQ(tok->piece(1917), "Ġworld");
  // Special tokens written in the text are recognized.
  Ids chat = tok->encode("<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", false);
  EXPECT_EQ(chat.front(), 128006);
  EXPECT_EQ(chat.back(), 128009);
  EXPECT_EQ(tok->decode(chat), "user\n\nHi");

  // The later Llama 3 files add BOS through a TemplateProcessing post-processor.
  json j = json::parse(qforge_test::read_bytes(dir + "/tokenizer.json"));
  j["post_processor"] = json::parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000],
                                                "tokens": ["<|begin_of_text|>"]}}}]})");
  auto templ = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(templ->encode("Hello, world!", true), with);
  EXPECT_EQ(templ->bos_id(), 128000);
  // add_bos_token: false in the config turns the fallback BOS off.
  auto no_bos = qforge::host::parse_hf_tokenizer(
      qforge_test::read_bytes(dir + "/tokenizer.json"),
      R"({"bos_token": "<|begin_of_text|>", "add_bos_token": false})");
  EXPECT_EQ(no_bos->encode("Hello, world!", true), plain);
}

TEST(HuggingFace, Qwen3SpecialTokens) {
  QFORGE_REQUIRE_SHARED("tokenizers/qwen3/tokenizer.json");
  auto tok = qforge::host::load_tokenizer(qforge_test::shared_path("tokenizers/qwen3/tokenizer.json"));
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_EQ(tok->eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ(tok->vocab_size(), 151669);
  // No BOS and no template: add_special adds nothing.
  EXPECT_EQ(tok->encode("Hello", true), tok->encode("Hello", false));
  std::string chat = "<|im_start|>user\nHi there<|im_end|>\n<think>\n\n</think>";
  Ids ids = tok->encode(chat, false);
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(ids.back(), 151668);  // </think> (an added token that is not special)
  EXPECT_EQ(tok->decode(ids, false), chat);
  EXPECT_EQ(tok->decode(ids, true), "user\nHi there\n<think>\n\n</think>");
  // NFC: a decomposed e + combining acute encodes as the precomposed é.
  EXPECT_EQ(tok->encode("cafe\xCC\x81", false), tok->encode("caf\xC3\xA9", false));
  // Invalid UTF-8 is refused; ids outside the vocabulary are skipped.
  EXPECT_NE(usage_error([&] { tok->encode("a\xFF" "b", false); }).find("UTF-8"), std::string::npos);
  EXPECT_EQ(tok->decode({9707, 999999999, -5}), "Hello");
  EXPECT_NE(usage_error([&] { tok->piece(999999999); }), "");
  // A byte sequence cut in the middle decodes to U+FFFD.
  Ids emoji = tok->encode("\xF0\x9F\x98\x80", false);  // 😀
  ASSERT_GE(emoji.size(), 1u);
  EXPECT_EQ(tok->decode(emoji), "\xF0\x9F\x98\x80");
}

TEST(HuggingFace, ConcurrentEncodes) {
  QFORGE_REQUIRE_SHARED("tokenizers/llama3/golden.json");
  std::string dir = qforge_test::shared_path("tokenizers/llama3");
  auto tok = qforge::host::load_tokenizer(dir);
  json golden = json::parse(qforge_test::read_bytes(dir + "/golden.json"));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int rep = 0; rep < 20; ++rep)
        for (const auto& c : golden["cases"])
          if (tok->encode(c["text"].get<std::string>(), false) != c["ids"].get<Ids>()) ++mismatches;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ------------------------------------------ synthetic tokenizer.json files --

// GPT-2's byte alphabet, written out here independently of the implementation.
std::string byte_char(int b) {
  int cp = b;
  bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  if (!printable) {
    int n = 0;
    for (int k = 0; k < b; ++k)
      if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174 && k <= 255))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// A byte-level BPE over the 256 bytes (ids 0..255 = byte values) plus the
// given merges (new tokens get ids 256, 257, ... in order).
json tiny(const std::vector<std::pair<std::string, std::string>>& merges,
          const std::string& split_regex = R"( ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+)") {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  json m = json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
    m.push_back(a + " " + b);
  }
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", split_regex}}}, {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"vocab", vocab}, {"merges", m}, {"ignore_merges", false},
        {"unk_token", nullptr}}}};
}

int32_t id_of(const json& j, const std::string& token) { return j["model"]["vocab"][token]; }

TEST(SyntheticBpe, LowestRankFirstLeftmostAmongEquals) {
  {
    json j = tiny({{"a", "b"}, {"b", "c"}, {"ab", "c"}});
    auto tok = qforge::host::parse_hf_tokenizer(j.dump());
    EXPECT_EQ(tok->encode("abc", false), (Ids{id_of(j, "abc")}));
  }
  {
    json j = tiny({{"b", "c"}, {"a", "b"}, {"a", "bc"}});
    auto tok = qforge::host::parse_hf_tokenizer(j.dump());
    EXPECT_EQ(tok->encode("abc", false), (Ids{id_of(j, "abc")}));
    EXPECT_EQ(tok->encode("abab", false), (Ids{id_of(j, "ab"), id_of(j, "ab")}));
  }
  {
    json j = tiny({{"a", "a"}});
    auto tok = qforge::host::parse_hf_tokenizer(j.dump());
    EXPECT_EQ(tok->encode("aaa", false), (Ids{id_of(j, "aa"), 'a'}));
    EXPECT_EQ(tok->encode("aaaa", false), (Ids{id_of(j, "aa"), id_of(j, "aa")}));
  }
  {  // "Ġ" is the byte-level form of the space
    json j = tiny({{"Ġ", "h"}, {"Ġh", "i"}});
    auto tok = qforge::host::parse_hf_tokenizer(j.dump());
    EXPECT_EQ(tok->encode("hi hi", false), (Ids{'h', 'i', id_of(j, "Ġhi")}));
    EXPECT_EQ(tok->decode(tok->encode("hi hi", false)), "hi hi");
  }
}

TEST(SyntheticBpe, IgnoreMerges) {
  json j = tiny({{"x", "y"}});
  j["model"]["vocab"]["abc"] = 300;  // reachable by no merge
  auto plain = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(plain->encode("abc", false), (Ids{'a', 'b', 'c'}));
  j["model"]["ignore_merges"] = true;
  auto whole = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(whole->encode("abc", false), (Ids{300}));
  EXPECT_EQ(whole->encode("abd", false), (Ids{'a', 'b', 'd'}));
}

TEST(SyntheticBpe, MergesAsPairs) {
  json j = tiny({{"a", "b"}});
  j["model"]["merges"] = json::parse(R"([["a", "b"]])");
  auto tok = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(tok->encode("ab", false), (Ids{id_of(j, "ab")}));
}

TEST(SyntheticBpe, AddedTokenFlags) {
  json j = tiny({});
  j["added_tokens"] = json::parse(R"([
    {"id": 400, "content": "<sep>", "special": true, "normalized": false},
    {"id": 401, "content": "<sepx>", "special": true, "normalized": false},
    {"id": 402, "content": "[L]", "special": false, "lstrip": true, "normalized": false},
    {"id": 403, "content": "[R]", "special": false, "rstrip": true, "normalized": false},
    {"id": 404, "content": "cat", "special": false, "single_word": true, "normalized": false}])");
  auto tok = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(tok->encode("a<sep>b", false), (Ids{'a', 400, 'b'}));
  EXPECT_EQ(tok->encode("<sepx>", false), (Ids{401}));  // longest match
  EXPECT_EQ(tok->encode("a  [L]b", false), (Ids{'a', 402, 'b'}));
  EXPECT_EQ(tok->encode("a[R]  b", false), (Ids{'a', 403, 'b'}));
  EXPECT_EQ(tok->encode("a cat b", false), (Ids{'a', id_of(j, "Ġ"), 404, id_of(j, "Ġ"), 'b'}));
  EXPECT_EQ(tok->encode("cats", false), (Ids{'c', 'a', 't', 's'}));
  EXPECT_EQ(tok->decode({'a', 400, 'b'}), "ab");
  EXPECT_EQ(tok->decode({'a', 400, 'b'}, false), "a<sep>b");
  EXPECT_EQ(tok->decode({'a', 402, 'b'}), "a[L]b");  // not special: kept
  EXPECT_EQ(tok->vocab_size(), 405);
}

TEST(SyntheticBpe, DiscardedSingleWordMatchIsSkippedWhole) {
  // As with Hugging Face's leftmost-longest matcher: "cat" (single_word) is
  // found in "cats" and discarded; the search resumes after it, so the "at"
  // inside it is not an added token there.
  json j = tiny({});
  j["added_tokens"] = json::parse(R"([
    {"id": 404, "content": "cat", "single_word": true, "normalized": false},
    {"id": 405, "content": "at", "normalized": false}])");
  auto tok = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(tok->encode("cats", false), (Ids{'c', 'a', 't', 's'}));
  EXPECT_EQ(tok->encode("bats", false), (Ids{'b', 405, 's'}));
}

TEST(SyntheticBpe, SplitBehaviors) {
  auto with = [](const std::string& behavior, bool invert) {
    json j = tiny({{"a", "b"}, {"b", "a"}});
    j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Split"},
                                              {"pattern", {{"String", "-"}}},
                                              {"behavior", behavior},
                                              {"invert", invert}};
    return qforge::host::parse_hf_tokenizer(j.dump());
  };
  // "ab-ba": the pieces decide which merges can apply.
  const int32_t ab = 256, ba = 257, dash = '-';
  EXPECT_EQ(with("Isolated", false)->encode("ab-ba", false), (Ids{ab, dash, ba}));
  EXPECT_EQ(with("Removed", false)->encode("ab-ba", false), (Ids{ab, ba}));
  EXPECT_EQ(with("MergedWithPrevious", false)->encode("ab-ba", false), (Ids{ab, dash, ba}));
  EXPECT_EQ(with("MergedWithNext", false)->encode("ab-ba", false), (Ids{ab, dash, ba}));
  EXPECT_EQ(with("Contiguous", false)->encode("a--b", false), (Ids{'a', dash, dash, 'b'}));
  // Merges across a piece boundary cannot happen: "b-" + "a" vs "b" + "-a".
  EXPECT_EQ(with("MergedWithPrevious", false)->encode("b-a", false), (Ids{'b', dash, 'a'}));
  EXPECT_EQ(with("Removed", false)->encode("b-a", false), (Ids{'b', 'a'}));
  EXPECT_EQ(with("Isolated", false)->encode("ba", false), (Ids{ba}));
  EXPECT_EQ(with("Removed", true)->encode("ab-ba", false), (Ids{dash}));
}

TEST(SyntheticBpe, ByteLevelWithRegexAndPrefixSpace) {
  json j = tiny({{"Ġ", "h"}, {"Ġh", "i"}});
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  auto tok = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(tok->encode("hi hi", false), (Ids{id_of(j, "Ġhi"), id_of(j, "Ġhi")}));
}

TEST(SyntheticBpe, RefusesMalformedFiles) {
  auto refuse = [](const json& j, const std::string& expect) {
    std::string msg = usage_error([&] { qforge::host::parse_hf_tokenizer(j.dump(), "", "tok.json"); });
    EXPECT_NE(msg.find(expect), std::string::npos) << "expected '" << expect << "' in: " << msg;
    EXPECT_NE(msg.find("tok.json"), std::string::npos) << msg;
  };
  json base = tiny({{"a", "b"}});
  {
    json j = base;
    j["model"]["type"] = "WordPiece";
    refuse(j, "WordPiece");
  }
  {
    json j = base;
    j["model"]["vocab"]["zz"] = -3;
    refuse(j, "out of range");
  }
  {
    json j = base;
    j["model"]["vocab"]["zz"] = "seven";
    refuse(j, "not an integer");
  }
  {
    json j = base;
    j["model"]["vocab"]["zz"] = 5;  // the id of byte 5
    refuse(j, "used by both");
  }
  {
    json j = base;
    j["model"]["merges"] = json::array({"ab"});
    refuse(j, "merges[0]");
  }
  {
    json j = base;
    j["model"]["merges"] = json::array({"a b c"});
    refuse(j, "merges[0]");
  }
  {
    json j = base;
    j["model"]["merges"] = json::array({json::array({"a", 3})});
    refuse(j, "merges[0]");
  }
  {
    json j = base;
    j["model"]["merges"] = json::array({"a b", "q zz"});
    refuse(j, "'zz' is not in the vocabulary");
  }
  {
    json j = base;
    j["model"]["merges"] = json::array({"c d"});  // "cd" is not in the vocabulary
    refuse(j, "merged token 'cd'");
  }
  {
    json j = base;
    j.erase("model");
    refuse(j, "'model'");
  }
  {
    json j = base;
    j["normalizer"] = {{"type", "Lowercase"}};
    refuse(j, "Lowercase");
  }
  {
    json j = base;
    j["pre_tokenizer"] = {{"type", "Metaspace"}};
    refuse(j, "Metaspace");
  }
  {
    json j = base;
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
    refuse(j, "regex");
  }
  {
    json j = base;
    j["added_tokens"] = json::parse(R"([{"id": -1, "content": "<x>"}])");
    refuse(j, "added_tokens[0]");
  }
  {
    json j = base;
    j["post_processor"] = json::parse(
        R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}})");
    refuse(j, "<s>");
  }
  std::string msg = usage_error([] { qforge::host::parse_hf_tokenizer("{not json", "", "tok.json"); });
  EXPECT_NE(msg.find("tok.json"), std::string::npos) << msg;
  msg = usage_error([&] { qforge::host::parse_hf_tokenizer(base.dump(), R"({"bos_token": "<nope>"})"); });
  EXPECT_NE(msg.find("<nope>"), std::string::npos) << msg;
}

TEST(SyntheticBpe, TemplateStringFormAndBert) {
  json j = tiny({});
  j["post_processor"] = json::parse(
      R"({"type": "TemplateProcessing", "single": "<s> $A </s>", "pair": "<s> $A </s> $B:1 </s>:1",
          "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                             "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}})");
  auto tok = qforge::host::parse_hf_tokenizer(j.dump());
  EXPECT_EQ(tok->encode("a", true), (Ids{1, 'a', 2}));
  EXPECT_EQ(tok->encode("a", false), (Ids{'a'}));
  j["post_processor"] = json::parse(R"({"type": "BertProcessing", "sep": ["x", 120], "cls": ["y", 121]})");
  EXPECT_EQ(qforge::host::parse_hf_tokenizer(j.dump())->encode("a", true), (Ids{121, 'a', 120}));
}

}  // namespace
