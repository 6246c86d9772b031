// Calibration data on the shared TinyStories text and token streams with the
// stories260K tokenizer, plus small JSONL/CSV files written to a temp dir.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <unistd.h>

#include "../support/test_data.hpp"
#include "qforge_host/data/calibration.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;
using Ids = std::vector<int32_t>;

namespace {

const char* const kCalibTxt = "data/tinystories_v2_calib.txt";
const char* const kValidTxt = "data/tinystories_valid.txt";
const char* const kValidU16 = "data/tinystories_valid.tok512.u16";
const char* const kValid100U16 = "data/tinystories_v2_valid_100.tok512.u16";

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

Ids read_u16(const std::string& path) {
  std::string b = read(path);
  Ids ids(b.size() / 2);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<unsigned char>(b[2 * i]) | (static_cast<unsigned char>(b[2 * i + 1]) << 8);
  return ids;
}

const qh::Tokenizer& tok() {
  static auto t = qh::load_tokenizer(qforge::test::shared_dir() + "/models/stories260K");
  return *t;
}

Ids with_bos(const std::string& text) {
  Ids out = {tok().bos_id()};
  Ids ids = tok().encode(text, false);
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

Ids row(const at::Tensor& ids, int64_t r) {
  at::Tensor x = ids[r].contiguous();
  return Ids(x.data_ptr<int64_t>(), x.data_ptr<int64_t>() + x.numel());
}

// Where `needle` occurs in `hay`, or -1.
int64_t find(const Ids& hay, const Ids& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? -1 : it - hay.begin();
}

Ids slice(const Ids& v, size_t from, size_t n) { return Ids(v.begin() + from, v.begin() + from + n); }

qh::CalibrationOptions options(const std::string& file, int64_t nsamples, int64_t seqlen,
                               const std::string& strategy = "random", uint64_t seed = 0) {
  qh::CalibrationOptions o;
  o.file = file;
  o.nsamples = nsamples;
  o.seqlen = seqlen;
  o.strategy = strategy;
  o.seed = seed;
  return o;
}

// The UsageError message of load_calibration, or a failure.
std::string usage_error(const qh::CalibrationOptions& o) {
  try {
    qh::load_calibration(tok(), o);
  } catch (const qh::UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no UsageError for " << o.file;
  return {};
}

#define EXPECT_HAS(msg, part) EXPECT_NE((msg).find(part), std::string::npos) << (msg)

// A fresh temp dir per test.
class CalibrationFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("qforge_calibration_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name, const std::string& bytes) {
    std::string p = (dir_ / name).string();
    write(p, bytes);
    return p;
  }
  fs::path dir_;
};

// JSON string literal for `s` (enough for the test texts).
std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else out += c;
  }
  return out + "\"";
}

std::string csv_quoted(const std::string& s) {
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

// ------------------------------------------------------------ generator --

TEST(CalibrationRng, IsTheStandardEngineWithAnUnbiasedPortableMapping) {
  // mt19937_64's output is fixed by the standard; pin the mapping on top.
  qh::detail::CalibrationRng a(0), b(0), c(1);
  std::vector<uint64_t> va, vb, vc;
  for (int i = 0; i < 8; ++i) va.push_back(a.below(1000)), vb.push_back(b.below(1000)), vc.push_back(c.below(1000));
  EXPECT_EQ(va, vb);
  EXPECT_NE(va, vc);
  std::mt19937_64 ref(0);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(va[i], ref() % 1000) << i;  // 2^64 mod 1000 rejects ~1e-16

  qh::detail::CalibrationRng r(7);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(r.below(1), 0u);
  uint64_t big = (uint64_t{1} << 63) + 12345;  // half of all outputs are rejected
  for (int i = 0; i < 100; ++i) EXPECT_LT(r.below(big), big);
  std::map<uint64_t, int> hist;
  for (int i = 0; i < 30000; ++i) ++hist[r.below(3)];
  ASSERT_EQ(hist.size(), 3u);
  for (auto [k, count] : hist) EXPECT_NEAR(count, 10000, 400) << k;
}

// ------------------------------------------------------------- strategies --

TEST(Calibration, RandomWindowsOfTheTextStream) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  QFORGE_REQUIRE_SHARED(model, "models/stories260K/tokenizer.model");
  auto cal = qh::load_calibration(tok(), options(path, 16, 256));
  Ids stream = with_bos(read(path));  // [BOS] + encode(the whole file)
  ASSERT_EQ(cal.ids.sizes(), (at::IntArrayRef{16, 256}));
  EXPECT_EQ(cal.ids.scalar_type(), at::kLong);
  EXPECT_EQ(cal.corpus_tokens, static_cast<int64_t>(stream.size()));
  EXPECT_EQ(cal.tokens_used, 16 * 256);
  EXPECT_EQ(cal.format, "text");
  EXPECT_EQ(cal.strategy, "random");
  EXPECT_EQ(cal.file, path);
  std::set<int64_t> starts;
  for (int64_t r = 0; r < 16; ++r) {
    int64_t at = find(stream, row(cal.ids, r));
    EXPECT_GE(at, 0) << "row " << r << " is not a window of the stream";
    starts.insert(at);
  }
  EXPECT_GT(starts.size(), 12u);  // random starts, not one window repeated
  EXPECT_HAS(cal.description, "16 random windows of 256 tokens (seed 0) from ");
  EXPECT_HAS(cal.description, " tokens of " + path);
  EXPECT_EQ(cal.description.find('\n'), std::string::npos);
}

TEST(Calibration, SameSeedSameIdsOtherSeedOtherIds) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  for (const char* strategy : {"random", "per-document", "drop-rand"}) {
    auto a = qh::load_calibration(tok(), options(path, 8, 64, strategy, 1234));
    auto b = qh::load_calibration(tok(), options(path, 8, 64, strategy, 1234));
    auto c = qh::load_calibration(tok(), options(path, 8, 64, strategy, 1235));
    EXPECT_TRUE(at::equal(a.ids, b.ids)) << strategy;
    EXPECT_FALSE(at::equal(a.ids, c.ids)) << strategy;
    EXPECT_EQ(a.description, b.description);
    EXPECT_HAS(c.description, "seed 1235");
  }
  // Strategies without randomness ignore the seed.
  for (const char* strategy : {"concat-chunk", "drop-head"}) {
    auto a = qh::load_calibration(tok(), options(path, 8, 64, strategy, 1));
    auto b = qh::load_calibration(tok(), options(path, 8, 64, strategy, 2));
    EXPECT_TRUE(at::equal(a.ids, b.ids)) << strategy;
  }
}

TEST(Calibration, PinnedWindowStartsForSeedZero) {
  // The first windows for seed 0 follow from mt19937_64(0) and the mapping:
  // start = first accepted output mod (tokens - seqlen + 1). A change here
  // changes every calibration set made so far.
  QFORGE_REQUIRE_SHARED(path, kValidU16);
  Ids stream = read_u16(path);
  auto cal = qh::load_calibration(tok(), options(path, 4, 512));
  std::mt19937_64 ref(0);
  uint64_t range = stream.size() - 512 + 1;
  for (int64_t r = 0; r < 4; ++r) {
    uint64_t start = ref() % range;  // rejection has probability ~2e-14 here
    EXPECT_EQ(row(cal.ids, r), slice(stream, start, 512)) << r;
  }
}

TEST(Calibration, ConcatChunkIsTheStreamFromTheStart) {
  QFORGE_REQUIRE_SHARED(path, kValidU16);
  Ids stream = read_u16(path);
  auto o = options(path, 5, 512, "concat-chunk");
  auto cal = qh::load_calibration(tok(), o);
  EXPECT_EQ(cal.format, "ids-u16");
  EXPECT_EQ(cal.corpus_tokens, 393013);  // SOURCES.md
  for (int64_t r = 0; r < 5; ++r) EXPECT_EQ(row(cal.ids, r), slice(stream, r * 512, 512));
  EXPECT_HAS(cal.description, "5 consecutive windows of 512 tokens from the start of 393,013 tokens");
  o.strategy = "concat_chunk";  // OneComp's spelling
  EXPECT_TRUE(at::equal(qh::load_calibration(tok(), o).ids, cal.ids));
}

TEST(Calibration, TextStreamMatchesThePreTokenizedReference) {
  // tinystories_valid.tok512.u16 is [1] + encode(whole tinystories_valid.txt)
  // by sentencepiece itself (SOURCES.md): the text path must give those ids.
  QFORGE_REQUIRE_SHARED(txt, kValidTxt);
  QFORGE_REQUIRE_SHARED(u16, kValidU16);
  Ids ref = read_u16(u16);
  int64_t n = static_cast<int64_t>(ref.size()) / 1024;
  auto cal = qh::load_calibration(tok(), options(txt, n, 1024, "concat-chunk"));
  EXPECT_EQ(cal.corpus_tokens, static_cast<int64_t>(ref.size()));
  at::Tensor want = at::tensor(std::vector<int64_t>(ref.begin(), ref.begin() + n * 1024), at::kLong)
                        .view({n, 1024});
  EXPECT_TRUE(at::equal(cal.ids, want));
}

TEST(Calibration, PerDocumentTakesParagraphsInASeededOrder) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  std::string text = read(path);
  auto docs = qh::detail::read_documents(text, "text", "text", path);
  const int64_t L = 96;
  std::vector<Ids> heads;  // [BOS]+tokens truncated, of every long-enough paragraph
  int64_t total = 0, shorter = 0;
  for (const auto& d : docs) {
    Ids ids = with_bos(d);
    total += static_cast<int64_t>(ids.size());
    if (static_cast<int64_t>(ids.size()) < L) ++shorter;
    else heads.push_back(slice(ids, 0, L));
  }
  ASSERT_GT(shorter, 0);  // the test means something: some paragraphs are skipped
  ASSERT_GE(heads.size(), 20u);

  auto cal = qh::load_calibration(tok(), options(path, 20, L, "per-document", 3));
  EXPECT_EQ(cal.documents, static_cast<int64_t>(docs.size()));
  EXPECT_EQ(cal.documents_short, shorter);
  EXPECT_EQ(cal.corpus_tokens, total);
  std::set<Ids> seen;
  for (int64_t r = 0; r < 20; ++r) {
    Ids got = row(cal.ids, r);
    EXPECT_EQ(got[0], tok().bos_id());
    EXPECT_NE(std::find(heads.begin(), heads.end(), got), heads.end()) << "row " << r;
    seen.insert(got);
  }
  EXPECT_EQ(seen.size(), 20u);  // no document twice
  // Not simply file order.
  bool file_order = true;
  for (int64_t r = 0; r < 20; ++r) file_order &= row(cal.ids, r) == heads[r];
  EXPECT_FALSE(file_order);
  EXPECT_HAS(cal.description, "20 documents truncated to 96 tokens, in a seeded random order (seed 3;");
  EXPECT_HAS(cal.description, std::to_string(shorter) + " of " + std::to_string(docs.size()) +
                                  " documents shorter than 96 tokens skipped");

  // Asking for every long document gives each exactly once.
  auto all = qh::load_calibration(tok(), options(path, static_cast<int64_t>(heads.size()), L, "per-document"));
  std::set<Ids> every;
  for (int64_t r = 0; r < all.ids.size(0); ++r) every.insert(row(all.ids, r));
  EXPECT_EQ(every, std::set<Ids>(heads.begin(), heads.end()));
}

TEST(Calibration, DropHeadIsOneCompsFileOrderHeads) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  auto docs = qh::detail::read_documents(read(path), "text", "text", path);
  const int64_t L = 128;
  std::vector<Ids> heads;
  for (const auto& d : docs) {
    Ids ids = with_bos(d);
    if (static_cast<int64_t>(ids.size()) >= L) heads.push_back(slice(ids, 0, L));
  }
  ASSERT_GE(heads.size(), 10u);
  auto o = options(path, 10, L, "drop-head");
  auto cal = qh::load_calibration(tok(), o);
  for (int64_t r = 0; r < 10; ++r) EXPECT_EQ(row(cal.ids, r), heads[r]) << r;
  EXPECT_HAS(cal.description, "the first 128 tokens of 10 documents in file order");
  o.strategy = "DROP_HEAD";
  EXPECT_TRUE(at::equal(qh::load_calibration(tok(), o).ids, cal.ids));
}

TEST(Calibration, DropRandIsAWindowInsideEachLongDocument) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  auto docs = qh::detail::read_documents(read(path), "text", "text", path);
  const int64_t L = 64;
  std::vector<Ids> long_docs;
  for (const auto& d : docs) {
    Ids ids = with_bos(d);
    if (static_cast<int64_t>(ids.size()) >= L) long_docs.push_back(ids);
  }
  auto cal = qh::load_calibration(tok(), options(path, 12, L, "drop-rand", 5));
  int not_head = 0;
  for (int64_t r = 0; r < 12; ++r) {
    int64_t at = find(long_docs[r], row(cal.ids, r));
    EXPECT_GE(at, 0) << r;
    not_head += at > 0;
  }
  EXPECT_GT(not_head, 6);
}

TEST(Calibration, PreTokenizedDocumentsStartAtBos) {
  // 100 stories, each [1] + encode(story) (SOURCES.md).
  QFORGE_REQUIRE_SHARED(path, kValid100U16);
  Ids stream = read_u16(path);
  std::vector<Ids> heads;  // of the stories with at least 128 tokens, in order
  for (size_t i = 0, start = 0; i <= stream.size(); ++i) {
    if (i == stream.size() || (i > start && stream[i] == 1)) {
      if (i - start >= 128) heads.push_back(slice(stream, start, 128));
      start = i;
    }
  }
  ASSERT_GE(heads.size(), 10u);
  auto cal = qh::load_calibration(tok(), options(path, 10, 128, "drop-head"));
  EXPECT_EQ(cal.documents, 100);
  EXPECT_EQ(cal.documents_short, 100 - static_cast<int64_t>(heads.size()));
  EXPECT_EQ(cal.corpus_tokens, static_cast<int64_t>(stream.size()));
  for (int64_t r = 0; r < 10; ++r) EXPECT_EQ(row(cal.ids, r), heads[r]) << r;
}

// ---------------------------------------------------------- file formats --

TEST_F(CalibrationFiles, JsonlAndCsvGiveTheSameDocumentsAsTheirText) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  auto docs = qh::detail::read_documents(read(path), "text", "text", path);
  docs.resize(30);
  std::string jsonl, jsonl_other, csv = "id,text,note\r\n";
  for (size_t i = 0; i < docs.size(); ++i) {
    jsonl += "{\"id\": " + std::to_string(i) + ", \"text\": " + json_string(docs[i]) + "}\n";
    if (i == 3) jsonl += "\n   \n";  // blank lines are skipped
    jsonl_other += "{\"content\": " + json_string(docs[i]) + "}\n";
    csv += std::to_string(i) + "," + csv_quoted(docs[i]) + ",\"a, \"\"quoted\"\"\nnote\"\r\n";
  }
  std::string j = file("c.jsonl", jsonl), c = file("c.csv", csv), j2 = file("other.jsonl", jsonl_other);
  EXPECT_EQ(qh::detail::read_documents(read(j), "jsonl", "text", j), docs);
  EXPECT_EQ(qh::detail::read_documents(read(c), "csv", "text", c), docs);

  // The stream is [BOS] + encode(documents joined by "\n\n"), as GPTQ does.
  std::string joined;
  for (size_t i = 0; i < docs.size(); ++i) joined += (i ? "\n\n" : "") + docs[i];
  Ids stream = with_bos(joined);
  auto cj = qh::load_calibration(tok(), options(j, 6, 200, "random", 9));
  auto cc = qh::load_calibration(tok(), options(c, 6, 200, "random", 9));
  auto o = options(j2, 6, 200, "random", 9);
  o.text_field = "content";
  auto cj2 = qh::load_calibration(tok(), o);
  EXPECT_EQ(cj.corpus_tokens, static_cast<int64_t>(stream.size()));
  EXPECT_EQ(cj.format, "jsonl");
  EXPECT_EQ(cc.format, "csv");
  EXPECT_TRUE(at::equal(cj.ids, cc.ids));
  EXPECT_TRUE(at::equal(cj.ids, cj2.ids));
  for (int64_t r = 0; r < 6; ++r) EXPECT_GE(find(stream, row(cj.ids, r)), 0) << r;

  // Per-document: the documents are the JSON lines / CSV rows.
  auto pj = qh::load_calibration(tok(), options(j, 5, 40, "drop-head"));
  auto pc = qh::load_calibration(tok(), options(c, 5, 40, "drop-head"));
  EXPECT_EQ(pj.documents, 30);
  EXPECT_TRUE(at::equal(pj.ids, pc.ids));
  int64_t r = 0;
  for (size_t d = 0; d < docs.size() && r < 5; ++d) {
    Ids ids = with_bos(docs[d]);
    if (ids.size() >= 40) {
      EXPECT_EQ(row(pj.ids, r++), slice(ids, 0, 40));
    }
  }
}

TEST_F(CalibrationFiles, ExplicitFormatOverridesTheExtension) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  std::string jsonl;
  for (int i = 0; i < 40; ++i) jsonl += "{\"text\": \"Once upon a time there was a cat number " + std::to_string(i) + ".\"}\n";
  std::string f = file("data.dat", jsonl);
  auto o = options(f, 2, 16);
  EXPECT_HAS(usage_error(o), "cannot tell its format from the extension '.dat'");
  o.format = "jsonl";
  EXPECT_EQ(qh::load_calibration(tok(), o).format, "jsonl");
  o.format = "ids_u16";  // underscore accepted; then the ids must be in range
  EXPECT_HAS(usage_error(o), "outside the tokenizer's vocabulary [0, 512)");
}

TEST_F(CalibrationFiles, ByteOrderMarkIsIgnored) {
  QFORGE_REQUIRE_SHARED(path, kCalibTxt);
  std::string text = "Once upon a time, there was a little dog. He liked to run and play in the park.";
  auto a = qh::load_calibration(tok(), options(file("a.txt", text), 1, 8, "concat-chunk"));
  auto b = qh::load_calibration(tok(), options(file("b.txt", "\xEF\xBB\xBF" + text), 1, 8, "concat-chunk"));
  EXPECT_TRUE(at::equal(a.ids, b.ids));
  auto c = qh::load_calibration(
      tok(), options(file("c.csv", "\xEF\xBB\xBFtext\n" + csv_quoted(text) + "\n"), 1, 8, "concat-chunk"));
  EXPECT_TRUE(at::equal(a.ids, c.ids));
}

TEST_F(CalibrationFiles, U32AndI64Ids) {
  QFORGE_REQUIRE_SHARED(path, kValid100U16);
  Ids stream = read_u16(path);
  std::string u32, i64;
  for (int32_t id : stream) {
    for (int b = 0; b < 4; ++b) u32 += static_cast<char>((id >> (8 * b)) & 0xFF);
    for (int b = 0; b < 8; ++b) i64 += static_cast<char>(b < 4 ? (id >> (8 * b)) & 0xFF : 0);
  }
  auto want = qh::load_calibration(tok(), options(path, 7, 300, "random", 11));
  auto a = qh::load_calibration(tok(), options(file("s.u32", u32), 7, 300, "random", 11));
  auto b = qh::load_calibration(tok(), options(file("s.I64", i64), 7, 300, "random", 11));
  EXPECT_EQ(a.format, "ids-u32");
  EXPECT_EQ(b.format, "ids-i64");
  EXPECT_TRUE(at::equal(a.ids, want.ids));
  EXPECT_TRUE(at::equal(b.ids, want.ids));
  // A negative int64 id is out of range.
  std::string neg(8, '\xFF');
  EXPECT_HAS(usage_error(options(file("neg.i64", i64 + neg), 1, 4)), "id -1 at position 39,344");
}

TEST(CalibrationCsv, Rfc4180) {
  auto recs = qh::detail::parse_csv(
      "a,b,c\r\n"
      "1,\"x, y\",\"say \"\"hi\"\"\"\n"
      "\n"
      "2,\"two\nlines\",\r\n"
      "3,,\"\"\r"
      "4,a\"b,z",
      "t.csv");
  ASSERT_EQ(recs.size(), 5u);
  EXPECT_EQ(recs[0].fields, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(recs[1].fields, (std::vector<std::string>{"1", "x, y", "say \"hi\""}));
  EXPECT_EQ(recs[2].fields, (std::vector<std::string>{"2", "two\nlines", ""}));
  EXPECT_EQ(recs[3].fields, (std::vector<std::string>{"3", "", ""}));
  EXPECT_EQ(recs[4].fields, (std::vector<std::string>{"4", "a\"b", "z"}));  // as Python's csv
  EXPECT_EQ(recs[0].line, 1);
  EXPECT_EQ(recs[1].line, 2);
  EXPECT_EQ(recs[2].line, 4);
  EXPECT_EQ(recs[3].line, 6);
  EXPECT_EQ(recs[4].line, 7);
  EXPECT_TRUE(qh::detail::parse_csv("", "t.csv").empty());
  EXPECT_EQ(qh::detail::parse_csv("x", "t.csv")[0].fields, std::vector<std::string>{"x"});
  EXPECT_EQ(qh::detail::parse_csv("\"\"", "t.csv")[0].fields, std::vector<std::string>{""});
}

TEST(CalibrationCsv, MalformedQuotesNameTheLine) {
  try {
    qh::detail::parse_csv("text\nok\n\"open\nstill open", "t.csv");
    FAIL();
  } catch (const qh::UsageError& e) {
    EXPECT_HAS(std::string(e.what()), "t.csv:3: a quoted field is not closed");
  }
  try {
    qh::detail::parse_csv("text\n\"ab\"c\n", "t.csv");
    FAIL();
  } catch (const qh::UsageError& e) {
    EXPECT_HAS(std::string(e.what()), "t.csv:2: text after the closing quote");
  }
}

// ---------------------------------------------------------------- errors --

TEST_F(CalibrationFiles, ErrorsNameTheFile) {
  QFORGE_REQUIRE_SHARED(calib, kCalibTxt);
  QFORGE_REQUIRE_SHARED(u16, kValid100U16);
  std::string missing = (dir_ / "nope.txt").string();
  EXPECT_HAS(usage_error(options(missing, 1, 8)), "calibration file " + missing + ": cannot open");

  std::string empty = file("empty.txt", "");
  EXPECT_HAS(usage_error(options(empty, 1, 8)), empty + ": empty corpus");
  std::string blank = file("blank.txt", " \n\n\t\n");
  EXPECT_HAS(usage_error(options(blank, 1, 8)), blank + ": empty corpus");
  std::string empty_ids = file("empty.u16", "");
  EXPECT_HAS(usage_error(options(empty_ids, 1, 8)), empty_ids + ": empty corpus");
  std::string empty_rows = file("e.jsonl", "{\"text\": \"  \"}\n{\"text\": \"\"}\n");
  EXPECT_HAS(usage_error(options(empty_rows, 1, 8)), empty_rows + ": empty corpus");
  std::string header_only = file("h.csv", "text\n");
  EXPECT_HAS(usage_error(options(header_only, 1, 8)), header_only + ": empty corpus");

  // Too short for the request.
  std::string small = file("small.txt", "Once upon a time there was a cat.");
  EXPECT_HAS(usage_error(options(small, 1, 100)), small + ": ");
  EXPECT_HAS(usage_error(options(small, 1, 100)), "is shorter than one window of 100");
  EXPECT_HAS(usage_error(options(calib, 1000, 512, "concat-chunk")),
             "hold 77 consecutive windows of 512, 1,000 were asked for");
  EXPECT_HAS(usage_error(options(calib, 10, 2000, "per-document")),
             "0 of its 101 documents have at least 2,000 tokens, 10 were asked for");
  EXPECT_HAS(usage_error(options(u16, 101, 16, "drop-head")), "of its 100 documents have at least 16");

  // Bad options.
  for (auto [n, L] : {std::pair<int64_t, int64_t>{0, 8}, {-1, 8}, {1, 0}, {1, -5}}) {
    std::string msg = usage_error(options(calib, n, L));
    EXPECT_HAS(msg, calib);
    EXPECT_HAS(msg, n < 1 ? "nsamples must be at least 1" : "seqlen must be at least 1");
  }
  auto o = options(calib, 1, 8, "sliding");
  EXPECT_HAS(usage_error(o), "unknown strategy 'sliding'");
  o = options(calib, 1, 8);
  o.format = "parquet";
  EXPECT_HAS(usage_error(o), "unknown format 'parquet'");
  EXPECT_HAS(usage_error(options(file("x.json", "{}"), 1, 8)), "extension '.json'");

  // JSONL: the line number and what is wrong.
  std::string bad = file("bad.jsonl", "{\"text\": \"fine\"}\n\n{\"text\": \"also fine\"}\n{\"text\": oops}\n");
  EXPECT_HAS(usage_error(options(bad, 1, 2)), bad + ":4: not valid JSON");
  std::string arr = file("arr.jsonl", "[\"text\"]\n");
  EXPECT_HAS(usage_error(options(arr, 1, 2)), arr + ":1: not a JSON object");
  std::string nofield = file("nf.jsonl", "{\"text\": \"a b c\"}\n{\"body\": \"x\", \"id\": 3}\n");
  EXPECT_HAS(usage_error(options(nofield, 1, 2)), nofield + ":2: no field 'text' (fields: body, id)");
  std::string notstr = file("ns.jsonl", "{\"text\": 42}\n");
  EXPECT_HAS(usage_error(options(notstr, 1, 2)), notstr + ":1: field 'text' is not a string");

  // CSV: missing column, ragged row.
  std::string nocol = file("nc.csv", "id,body\n1,hello\n");
  EXPECT_HAS(usage_error(options(nocol, 1, 2)), nocol + ":1: no column 'text' in the header (columns: 'id', 'body')");
  std::string ragged = file("r.csv", "id,text\n1,hello\n2,a,b\n");
  EXPECT_HAS(usage_error(options(ragged, 1, 2)), ragged + ":3: 3 fields, the header has 2");

  // Pre-tokenized: ids out of range, a partial id.
  std::string big = file("big.u16", std::string("\x01\x00\x05\x00\x58\x02", 6));  // 1, 5, 600
  EXPECT_HAS(usage_error(options(big, 1, 2)), big + ": id 600 at position 2 is outside the tokenizer's vocabulary [0, 512)");
  std::string odd = file("odd.u16", std::string("\x01\x00\x05", 3));
  EXPECT_HAS(usage_error(options(odd, 1, 1)), odd + ": 3 bytes is not a whole number of uint16 ids");
}

TEST_F(CalibrationFiles, TokenizerWithoutBosAndInvalidUtf8) {
  // Qwen3's tokenizer.json has no BOS: streams and documents get none, and a
  // pre-tokenized stream is one document. Its encoder refuses invalid UTF-8:
  // the error names the calibration file, also from the parallel per-document
  // tokenization.
  QFORGE_REQUIRE_SHARED(dir, "tokenizers/qwen3/tokenizer.json");
  auto qwen = qh::load_tokenizer(qforge::test::shared_dir() + "/tokenizers/qwen3");
  ASSERT_EQ(qwen->bos_id(), -1);
  std::string text = "Once upon a time, there was a little dog.\n\nHe liked to run and play in the park.";
  auto cal = qh::load_calibration(*qwen, options(file("a.txt", text), 1, 5, "concat-chunk"));
  Ids ids = qwen->encode(text, false);
  EXPECT_EQ(cal.corpus_tokens, static_cast<int64_t>(ids.size()));
  EXPECT_EQ(row(cal.ids, 0), slice(ids, 0, 5));
  auto docs = qh::load_calibration(*qwen, options(file("b.txt", text), 2, 5, "drop-head"));
  EXPECT_EQ(row(docs.ids, 1), slice(qwen->encode("He liked to run and play in the park.", false), 0, 5));

  std::string u32;
  for (int32_t id : ids)
    for (int b = 0; b < 4; ++b) u32 += static_cast<char>((id >> (8 * b)) & 0xFF);
  auto pre = qh::load_calibration(*qwen, options(file("c.u32", u32), 1, 5, "per-document"));
  EXPECT_EQ(pre.documents, 1);

  std::string bad = file("bad.txt", text + "\n\nbroken \xC3(\n\n" + text);
  for (const char* strategy : {"random", "per-document"}) {
    try {
      qh::load_calibration(*qwen, options(bad, 1, 4, strategy));
      ADD_FAILURE() << strategy;
    } catch (const qh::UsageError& e) {
      EXPECT_HAS(std::string(e.what()), "calibration file " + bad + ": ");
    }
  }
}
