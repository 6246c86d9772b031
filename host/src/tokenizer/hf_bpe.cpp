// Hugging Face tokenizer.json with a BPE model (byte-level: GPT-2, Llama 3,
// Qwen2/3, ...), following the semantics of the `tokenizers` library:
//
//   text -> split on added tokens (non-normalized ones on the raw text,
//           leftmost-longest, lstrip/rstrip/single_word) -> normalizer (utf8proc)
//        -> split on normalized added tokens -> pre-tokenizers (Split regexes
//           through PCRE2 with UTF+UCP and JIT; ByteLevel) -> BPE per word
//           (merge ranks, lowest rank first and leftmost among equals; a word
//           cache) -> post-processor.
//
// Regex dialect: the files' patterns are written for Oniguruma/Rust regex; the
// constructs they use (\p{L}, \p{N}, \s, (?i:...), (?!...), {1,3}) mean the same
// in PCRE2 with PCRE2_UCP (\s = Unicode White_Space, U+0085 included).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <fmt/format.h>
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>
#include <variant>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

using nlohmann::json;

namespace qforge::host {
namespace {

// ---------------------------------------------------------------- UTF-8 --

// The code point of a well-formed sequence of `len` bytes.
uint32_t decode_cp(const unsigned char* s, size_t len) {
  switch (len) {
    case 1: return s[0];
    case 2: return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    case 3: return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    default:
      return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
             (s[3] & 0x3Fu);
  }
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Bytes -> UTF-8, each maximal ill-formed subpart replaced by U+FFFD (as
// Rust's String::from_utf8_lossy).
std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0, n = bytes.size();
  while (i < n) {
    size_t sub = 1;
    size_t len = p[i] < 0x80 ? 1 : utf8_len(p + i, n - i, &sub);
    if (len) {
      out.append(bytes.data() + i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += sub;
    }
  }
  return out;
}

// Unicode White_Space (Rust's char::is_whitespace).
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// A regex \w character (letters, marks, decimal and letter numbers,
// connector punctuation, joiners): what single_word added tokens must not touch.
bool is_word_char(uint32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  auto cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_ME) ||
         cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL ||
         cat == UTF8PROC_CATEGORY_PC;
}

// The code point that ends at `end` (well-formed text).
uint32_t last_cp(std::string_view s, size_t end, size_t* start = nullptr) {
  size_t b = end - 1;
  while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
  if (start) *start = b;
  auto* p = reinterpret_cast<const unsigned char*>(s.data()) + b;
  return decode_cp(p, end - b);
}

uint32_t cp_at(std::string_view s, size_t i, size_t* len) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  *len = utf8_len(p, s.size() - i);
  return decode_cp(p, *len);
}

// ----------------------------------------------------------- byte level --

// GPT-2's reversible map from bytes to printable characters: the printable
// Latin-1 bytes stand for themselves, the other 68 become U+0100 upwards.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 0x144> cp_to_byte;  // -1: not a byte-level character

  ByteAlphabet() {
    cp_to_byte.fill(-1);
    uint32_t extra = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      uint32_t cp = printable ? b : 256 + extra++;
      append_utf8(byte_to_utf8[b], cp);
      cp_to_byte[cp] = static_cast<int16_t>(b);
    }
  }
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet a;
  return a;
}

// ----------------------------------------------------------------- regex --

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (code_ == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw UsageError(fmt::format("{}: bad regex at offset {}: {} (pattern {})", where, off,
                                   reinterpret_cast<const char*>(msg), pattern));
    }
    // JIT when the platform has it; pcre2_match uses it automatically.
    (void)pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);
  }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex() { pcre2_code_free(code_); }

  // Calls f(start, end) for each non-overlapping match in `s`, left to right.
  template <typename F>
  void for_each_match(std::string_view s, pcre2_match_data* md, F&& f) const {
    auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos <= s.size()) {
      int rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
      if (rc == PCRE2_ERROR_JIT_STACKLIMIT)  // only for pathological input; retry interpreted
        rc = pcre2_match(code_, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md,
                         nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) return;
      if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        // PCRE2's match limit stops a hostile pattern (catastrophic
        // backtracking): the tokenizer file is at fault, not qforge.
        throw ModelFileError(fmt::format(
            "tokenizer.json: a pre-tokenizer pattern cannot be matched against this text: {}",
            reinterpret_cast<const char*>(msg)));
      }
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
      size_t start = ov[0], end = ov[1];
      if (end > start) {
        f(start, end);
        pos = end;
      } else {  // an empty match: no piece, step over one character
        if (start >= s.size()) return;
        size_t len = 1;
        cp_at(s, start, &len);
        pos = start + len;
      }
    }
  }

  pcre2_code* code() const { return code_; }

 private:
  pcre2_code* code_ = nullptr;
};

struct MatchData {
  explicit MatchData(const pcre2_code* code) : md(pcre2_match_data_create_from_pattern(code, nullptr)) {
    if (!md) throw std::bad_alloc();
  }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  MatchData(MatchData&& o) noexcept : md(o.md) { o.md = nullptr; }
  ~MatchData() { pcre2_match_data_free(md); }
  pcre2_match_data* md;
};

// ------------------------------------------------------------ normalizer --

class Normalizer {
 public:
  void add(int options) { steps_.push_back(options); }
  bool empty() const { return steps_.empty(); }

  std::string apply(std::string_view s) const {
    std::string cur(s);
    for (int options : steps_) {
      if (invariant(cur, options)) continue;
      utf8proc_uint8_t* dst = nullptr;
      utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(cur.data()),
                                        static_cast<utf8proc_ssize_t>(cur.size()), &dst,
                                        static_cast<utf8proc_option_t>(options));
      if (n < 0)
        throw UsageError(fmt::format("cannot normalize the text: {}", utf8proc_errmsg(n)));
      cur.assign(reinterpret_cast<const char*>(dst), static_cast<size_t>(n));
      std::free(dst);
    }
    return cur;
  }

 private:
  // ASCII is invariant under every form; text below U+0300 under NFC (nothing
  // there decomposes canonically or composes with what precedes it).
  static bool invariant(std::string_view s, int options) {
    unsigned char limit = (options == (UTF8PROC_STABLE | UTF8PROC_COMPOSE)) ? 0xCC : 0x80;
    for (unsigned char c : s)
      if (c >= limit) return false;
    return true;
  }
  std::vector<int> steps_;
};

// --------------------------------------------------------- pre-tokenizer --

enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct SplitStep {
  int regex = -1;       // index into the tokenizer's regexes, or
  std::string literal;  // a literal pattern
  Behavior behavior = Behavior::Isolated;
  bool invert = false;
};

struct ByteLevelStep {
  bool add_prefix_space = false;
  int regex = -1;  // the GPT-2 pattern's index into the regexes when use_regex
};

using PreStep = std::variant<SplitStep, ByteLevelStep>;

const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Per-encode scratch: strings made by pre-tokenizers and PCRE2 match data.
struct Scratch {
  std::deque<std::string> arena;
  std::vector<MatchData> match_data;  // one per regex, same index
};

// ----------------------------------------------------------------- model --

struct AddedToken {
  int32_t id = -1;
  std::string original;  // as in the file
  std::string content;   // as matched (normalized when `normalized`)
  bool special = false, single_word = false, lstrip = false, rstrip = false, normalized = false;
};

// Leftmost-longest matching of a set of strings.
class TokenMatcher {
 public:
  void add(const std::string& s, int index) {
    if (s.empty()) return;
    by_first_[static_cast<unsigned char>(s[0])].push_back({s, index});
    any_ = true;
  }
  // After the last add: longest first, so the first hit is the longest match.
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(),
                       [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  bool empty() const { return !any_; }
  // The longest entry that starts at s[i], or -1.
  int match_at(std::string_view s, size_t i, size_t* len) const {
    for (const auto& [str, index] : by_first_[static_cast<unsigned char>(s[i])]) {
      if (str.size() <= s.size() - i && std::memcmp(s.data() + i, str.data(), str.size()) == 0) {
        *len = str.size();
        return index;
      }
    }
    return -1;
  }

 private:
  std::array<std::vector<std::pair<std::string, int>>, 256> by_first_;
  bool any_ = false;
};

// A piece of text: `added` >= 0 is an added token's index, else text to tokenize.
struct Segment {
  std::string_view text;
  int added = -1;
};

class HfBpeTokenizer final : public Tokenizer {
 public:
  HfBpeTokenizer(std::string_view tokenizer_json, std::string_view config_json,
                 const std::string& name)
      : name_(name) {
    json j = json::parse(tokenizer_json.begin(), tokenizer_json.end(), nullptr, false);
    if (j.is_discarded()) throw UsageError(fmt::format("{}: not valid JSON", name_));
    if (!j.is_object()) throw UsageError(fmt::format("{}: not a JSON object", name_));
    load_model(member(j, "model", "the file"));
    load_added_tokens(j);
    load_normalizer(j.contains("normalizer") ? j["normalizer"] : json());
    load_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json());
    warn_missing_bytes();
    build_added_matchers();
    load_post_processor(j.contains("post_processor") ? j["post_processor"] : json());
    load_decoder(j.contains("decoder") ? j["decoder"] : json());
    load_config(config_json);
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    size_t bad = find_invalid_utf8(text);
    if (bad != std::string_view::npos)
      throw UsageError(fmt::format("the text is not valid UTF-8 (byte {})", bad));
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 8);
    if (add_special) ids.insert(ids.end(), prefix_.begin(), prefix_.end());

    Scratch scratch;
    for (const auto& r : regexes_) scratch.match_data.emplace_back(r->code());
    std::vector<Segment> raw, norm;
    split_added(text, raw_matcher_, raw);
    for (const Segment& seg : raw) {
      if (seg.added >= 0) {
        ids.push_back(added_[seg.added].id);
        continue;
      }
      std::string_view piece = seg.text;
      if (!normalizer_.empty()) piece = scratch.arena.emplace_back(normalizer_.apply(piece));
      norm.clear();
      split_added(piece, normalized_matcher_, norm);
      for (const Segment& s : norm) {
        if (s.added >= 0) {
          ids.push_back(added_[s.added].id);
        } else {
          encode_text(s.text, scratch, ids);
        }
      }
      scratch.arena.clear();
    }
    if (add_special) ids.insert(ids.end(), suffix_.begin(), suffix_.end());
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::vector<const std::string*> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) {
      const std::string* t = token_of(id);
      if (t == nullptr) continue;
      if (skip_special && special_contents_.count(*t)) continue;
      tokens.push_back(t);
    }
    if (!byte_level_decoder_) {  // Hugging Face joins with spaces without a decoder
      std::string out;
      for (size_t k = 0; k < tokens.size(); ++k) {
        if (k) out += ' ';
        out += *tokens[k];
      }
      return out;
    }
    const auto& alphabet = byte_alphabet();
    std::string bytes;
    for (const std::string* t : tokens) {
      // A token with a character outside the byte alphabet contributes its
      // own UTF-8 bytes (as the ByteLevel decoder does).
      size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t->size();) {
        size_t len;
        uint32_t cp = cp_at(*t, i, &len);
        if (len == 0 || cp >= alphabet.cp_to_byte.size() || alphabet.cp_to_byte[cp] < 0) {
          ok = false;
          break;
        }
        bytes += static_cast<char>(alphabet.cp_to_byte[cp]);
        i += len;
      }
      if (!ok) {
        bytes.resize(mark);
        bytes += *t;
      }
    }
    return utf8_lossy(bytes);
  }

  std::string piece(int32_t id) const override {
    const std::string* t = token_of(id);
    if (t == nullptr)
      throw UsageError(fmt::format("id {} is not in the vocabulary of {} (size {})", id, name_,
                                   vocab_size_));
    return *t;
  }

  int64_t vocab_size() const override { return vocab_size_; }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  // ------------------------------------------------------------ loading --

  [[noreturn]] void fail(const std::string& what) const {
    throw UsageError(fmt::format("{}: {}", name_, what));
  }

  const json& member(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object() || !obj.contains(key)) fail(fmt::format("{} has no '{}'", where, key));
    return obj[key];
  }

  static std::string type_of(const json& j) {
    if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "";
    return j["type"].get<std::string>();
  }

  bool flag(const json& obj, const char* key, bool dflt, const std::string& where) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) fail(fmt::format("{}: '{}' must be true or false", where, key));
    return it->get<bool>();
  }

  static constexpr int64_t kMaxId = (int64_t{1} << 24) - 1;  // a sanity bound

  // A byte-level vocabulary lacking some of the 256 byte symbols loses those
  // bytes from the text without an unk token (as Hugging Face's does): said once.
  void warn_missing_bytes() const {
    const bool byte_level = std::any_of(pre_.begin(), pre_.end(), [](const PreStep& s) {
      return std::holds_alternative<ByteLevelStep>(s);
    });
    if (!byte_level || unk_id_ >= 0) return;
    int missing = 0, first = -1;
    for (int b = 0; b < 256; ++b)
      if (!vocab_.count(byte_alphabet().byte_to_utf8[b])) {
        ++missing;
        if (first < 0) first = b;
      }
    if (missing > 0)
      log(LogLevel::warn, "{}: {} of the 256 byte symbols are not in the vocabulary (the first: "
          "byte 0x{:02X}) and there is no unk token: text holding them loses those bytes", name_,
          missing, first);
  }

  void load_model(const json& m) {
    if (!m.is_object()) fail("'model' must be an object");
    std::string type = type_of(m);
    if (type != "BPE" && !(type.empty() && m.contains("merges")))
      fail(fmt::format("model type '{}' is not supported (only BPE)",
                       type.empty() ? "(none)" : type));
    const json& vocab = member(m, "vocab", "model");
    if (!vocab.is_object()) fail("model.vocab must be an object of token -> id");
    vocab_.reserve(vocab.size() * 2);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer())
        fail(fmt::format("model.vocab: the id of '{}' is not an integer", it.key()));
      int64_t id = it.value().get<int64_t>();
      if (id < 0 || id > kMaxId)
        fail(fmt::format("model.vocab: id {} of '{}' is out of range [0, {}]", id, it.key(), kMaxId));
      if (static_cast<size_t>(id) >= id_to_token_.size()) {
        id_to_token_.resize(id + 1);
        has_id_.resize(id + 1, false);
      }
      if (has_id_[id])
        fail(fmt::format("model.vocab: id {} is used by both '{}' and '{}'", id,
                         id_to_token_[id], it.key()));
      has_id_[id] = true;
      id_to_token_[id] = it.key();
      vocab_.emplace(it.key(), static_cast<int32_t>(id));
    }
    if (vocab_.empty()) fail("model.vocab is empty");
    vocab_size_ = static_cast<int64_t>(id_to_token_.size());

    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      auto it = m.find(key);
      if (it != m.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
        fail(fmt::format("model.{} is not supported", key));
    }
    if (auto it = m.find("dropout"); it != m.end() && !it->is_null()) {
      if (!it->is_number() || it->get<double>() != 0.0)
        fail("model.dropout is not supported (encoding here is deterministic)");
    }
    ignore_merges_ = flag(m, "ignore_merges", false, "model");
    byte_fallback_ = flag(m, "byte_fallback", false, "model");
    fuse_unk_ = flag(m, "fuse_unk", false, "model");
    if (auto it = m.find("unk_token"); it != m.end() && !it->is_null()) {
      if (!it->is_string()) fail("model.unk_token must be a string or null");
      auto v = vocab_.find(it->get<std::string>());
      if (v == vocab_.end())
        fail(fmt::format("model.unk_token '{}' is not in the vocabulary", it->get<std::string>()));
      unk_id_ = v->second;
    }

    char_ids_.assign(1024, -1);
    for (const auto& [tok, id] : vocab_) {
      size_t len = 0;
      if (tok.empty() || find_invalid_utf8(tok) != std::string_view::npos) continue;
      uint32_t cp = cp_at(tok, 0, &len);
      if (len == tok.size() && cp < char_ids_.size()) char_ids_[cp] = id;
    }

    const json& merges = member(m, "merges", "model");
    if (!merges.is_array()) fail("model.merges must be an array");
    merges_.reserve(merges.size() * 2);
    int32_t rank = 0;
    for (size_t r = 0; r < merges.size(); ++r) {
      const json& e = merges[r];
      std::string a, b;
      if (e.is_string()) {
        const std::string& s = e.get_ref<const std::string&>();
        if (s.rfind("#version", 0) == 0) continue;  // a merges.txt header
        size_t sp = s.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size() ||
            s.find(' ', sp + 1) != std::string::npos)
          fail(fmt::format("model.merges[{}] = \"{}\" is not two tokens separated by one space", r, s));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0].get<std::string>();
        b = e[1].get<std::string>();
      } else {
        fail(fmt::format("model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]", r));
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b), iab = vocab_.find(a + b);
      if (ia == vocab_.end() || ib == vocab_.end())
        fail(fmt::format("model.merges[{}]: '{}' is not in the vocabulary",
                         r, ia == vocab_.end() ? a : b));
      if (iab == vocab_.end())
        fail(fmt::format("model.merges[{}]: the merged token '{}' is not in the vocabulary", r, a + b));
      // A repeated pair takes its last rank, as in `tokenizers`.
      merges_[pair_key(ia->second, ib->second)] = std::make_pair(rank++, iab->second);
    }
  }

  void load_added_tokens(const json& j) {
    auto it = j.find("added_tokens");
    if (it == j.end() || it->is_null()) return;
    if (!it->is_array()) fail("'added_tokens' must be an array");
    for (size_t k = 0; k < it->size(); ++k) {
      const json& t = (*it)[k];
      std::string where = fmt::format("added_tokens[{}]", k);
      if (!t.is_object()) fail(where + " is not an object");
      const json& id = member(t, "id", where);
      const json& content = member(t, "content", where);
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId)
        fail(fmt::format("{}: id must be an integer in [0, {}]", where, kMaxId));
      if (!content.is_string() || content.get<std::string>().empty())
        fail(where + ": content must be a non-empty string");
      AddedToken a;
      a.id = static_cast<int32_t>(id.get<int64_t>());
      a.original = a.content = content.get<std::string>();
      if (find_invalid_utf8(a.content) != std::string_view::npos)
        fail(where + ": content is not valid UTF-8");
      a.special = flag(t, "special", false, where);
      a.single_word = flag(t, "single_word", false, where);
      a.lstrip = flag(t, "lstrip", false, where);
      a.rstrip = flag(t, "rstrip", false, where);
      a.normalized = flag(t, "normalized", !a.special, where);
      vocab_size_ = std::max<int64_t>(vocab_size_, a.id + int64_t{1});
      added_by_id_[a.id] = static_cast<int>(added_.size());
      if (a.special) special_contents_.insert(a.original);
      added_.push_back(std::move(a));
    }
  }

  void load_normalizer(const json& n) {
    if (n.is_null()) return;
    std::string type = type_of(n);
    if (type == "Sequence") {
      const json& list = member(n, "normalizers", "normalizer");
      if (!list.is_array()) fail("normalizer.normalizers must be an array");
      for (const json& s : list) load_normalizer(s);
      return;
    }
    int opts = UTF8PROC_STABLE;
    if (type == "NFC") opts |= UTF8PROC_COMPOSE;
    else if (type == "NFD") opts |= UTF8PROC_DECOMPOSE;
    else if (type == "NFKC") opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    else if (type == "NFKD") opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    else
      fail(fmt::format("normalizer '{}' is not supported (NFC, NFD, NFKC, NFKD, Sequence, null are)",
                       type));
    normalizer_.add(opts);
  }

  void load_pre_tokenizer(const json& p) {
    if (p.is_null()) return;
    std::string type = type_of(p);
    if (type == "Sequence") {
      const json& list = member(p, "pretokenizers", "pre_tokenizer");
      if (!list.is_array()) fail("pre_tokenizer.pretokenizers must be an array");
      for (const json& s : list) load_pre_tokenizer(s);
      return;
    }
    if (type == "ByteLevel") {
      ByteLevelStep s;
      s.add_prefix_space = flag(p, "add_prefix_space", true, "ByteLevel pre-tokenizer");
      if (flag(p, "use_regex", true, "ByteLevel pre-tokenizer")) {
        s.regex = static_cast<int>(regexes_.size());
        regexes_.push_back(std::make_unique<Regex>(kGpt2Pattern, name_ + ": ByteLevel"));
      }
      pre_.emplace_back(s);
      return;
    }
    if (type == "Split") {
      SplitStep s;
      const json& pattern = member(p, "pattern", "Split pre-tokenizer");
      if (pattern.is_object() && pattern.contains("Regex") && pattern["Regex"].is_string()) {
        s.regex = static_cast<int>(regexes_.size());
        regexes_.push_back(std::make_unique<Regex>(pattern["Regex"].get<std::string>(),
                                                   name_ + ": Split pre-tokenizer"));
      } else if (pattern.is_object() && pattern.contains("String") && pattern["String"].is_string()) {
        s.literal = pattern["String"].get<std::string>();
        if (s.literal.empty()) fail("Split pre-tokenizer: empty String pattern");
      } else {
        fail("Split pre-tokenizer: pattern must be {\"Regex\": ...} or {\"String\": ...}");
      }
      std::string behavior = p.contains("behavior") && p["behavior"].is_string()
                                 ? p["behavior"].get<std::string>() : "";
      static const std::pair<const char*, Behavior> kBehaviors[] = {
          {"Removed", Behavior::Removed},
          {"Isolated", Behavior::Isolated},
          {"MergedWithPrevious", Behavior::MergedWithPrevious},
          {"MergedWithNext", Behavior::MergedWithNext},
          {"Contiguous", Behavior::Contiguous}};
      bool found = false;
      for (const auto& [n, b] : kBehaviors)
        if (behavior == n) s.behavior = b, found = true;
      if (!found) fail(fmt::format("Split pre-tokenizer: unknown behavior '{}'", behavior));
      s.invert = flag(p, "invert", false, "Split pre-tokenizer");
      pre_.emplace_back(std::move(s));
      return;
    }
    fail(fmt::format(
        "pre-tokenizer '{}' is not supported (Split, ByteLevel, Sequence, null are)",
        type.empty() ? "(no type)" : type));
  }

  // After the normalizer is known: normalized added tokens match normalized text.
  void build_added_matchers() {
    for (size_t k = 0; k < added_.size(); ++k) {
      AddedToken& a = added_[k];
      if (a.normalized && !normalizer_.empty()) a.content = normalizer_.apply(a.content);
      (a.normalized ? normalized_matcher_ : raw_matcher_).add(a.content, static_cast<int>(k));
    }
    raw_matcher_.finish();
    normalized_matcher_.finish();
  }

  // Adds the ids a TemplateProcessing single template puts before/after $A.
  void load_template(const json& p) {
    std::map<std::string, std::vector<int32_t>> specials;
    if (auto it = p.find("special_tokens"); it != p.end() && !it->is_null()) {
      if (!it->is_object()) fail("TemplateProcessing.special_tokens must be an object");
      for (auto s = it->begin(); s != it->end(); ++s) {
        std::vector<int32_t> ids;
        const json& list = member(s.value(), "ids", "TemplateProcessing special token " + s.key());
        if (!list.is_array()) fail("TemplateProcessing: special token ids must be an array");
        for (const json& id : list) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxId)
            fail(fmt::format("TemplateProcessing: bad id in special token '{}'", s.key()));
          ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
        specials[s.key()] = ids;
      }
    }
    const json& single = member(p, "single", "TemplateProcessing");
    // Items: {"SpecialToken": {"id": NAME}}, {"Sequence": {"id": "A"}}, or the
    // string forms "$A", "$0", "$A:1", "NAME", "NAME:1".
    std::vector<json> items;
    if (single.is_string()) {
      std::string s = single.get<std::string>();
      size_t i = 0;
      while (i < s.size()) {
        size_t j = s.find(' ', i);
        if (j == std::string::npos) j = s.size();
        if (j > i) items.emplace_back(s.substr(i, j - i));
        i = j + 1;
      }
    } else if (single.is_array()) {
      items.assign(single.begin(), single.end());
    } else {
      fail("TemplateProcessing.single must be an array or a string");
    }
    std::vector<int32_t> pre, post;
    int sequences = 0;
    for (const json& item : items) {
      std::string special;
      bool is_sequence = false;
      std::string seq_id;
      if (item.is_string()) {
        std::string s = item.get<std::string>();
        if (auto colon = s.rfind(':'); colon != std::string::npos && colon > 0) s = s.substr(0, colon);
        if (!s.empty() && s[0] == '$') {
          is_sequence = true;
          seq_id = s.substr(1);
        } else {
          special = s;
        }
      } else if (item.is_object() && item.contains("Sequence")) {
        is_sequence = true;
        const json& id = item["Sequence"].contains("id") ? item["Sequence"]["id"] : json("A");
        seq_id = id.is_string() ? id.get<std::string>() : "?";
      } else if (item.is_object() && item.contains("SpecialToken") &&
                 item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
        special = item["SpecialToken"]["id"].get<std::string>();
      } else {
        fail(fmt::format("TemplateProcessing: unknown template item {}", item.dump()));
      }
      if (is_sequence) {
        if (!(seq_id.empty() || seq_id == "A" || seq_id == "0"))
          fail(fmt::format("TemplateProcessing: the single template uses sequence ${}", seq_id));
        ++sequences;
        continue;
      }
      auto sp = specials.find(special);
      if (sp == specials.end())
        fail(fmt::format("TemplateProcessing: special token '{}' is not in special_tokens", special));
      auto& dst = sequences ? post : pre;
      dst.insert(dst.end(), sp->second.begin(), sp->second.end());
    }
    if (sequences != 1) fail("TemplateProcessing: the single template must contain $A exactly once");
    prefix_.insert(prefix_.begin(), pre.begin(), pre.end());
    suffix_.insert(suffix_.end(), post.begin(), post.end());
    has_template_ = true;
  }

  void load_post_processor(const json& p) {
    if (p.is_null()) return;
    std::string type = type_of(p);
    if (type == "Sequence") {
      const json& list = member(p, "processors", "post_processor");
      if (!list.is_array()) fail("post_processor.processors must be an array");
      for (const json& s : list) load_post_processor(s);
    } else if (type == "ByteLevel") {
      // Offsets only: no ids.
    } else if (type == "TemplateProcessing") {
      load_template(p);
    } else if (type == "BertProcessing" || type == "RobertaProcessing") {
      auto token = [&](const char* key) {
        const json& t = member(p, key, type);
        if (!t.is_array() || t.size() != 2 || !t[1].is_number_integer() || t[1].get<int64_t>() < 0)
          fail(fmt::format("{}.{} must be [token, id]", type, key));
        return static_cast<int32_t>(t[1].get<int64_t>());
      };
      prefix_.insert(prefix_.begin(), token("cls"));
      suffix_.push_back(token("sep"));
      has_template_ = true;
    } else {
      fail(fmt::format(
          "post-processor '{}' is not supported (TemplateProcessing, ByteLevel, BertProcessing, "
          "RobertaProcessing, Sequence, null are)",
          type));
    }
  }

  void load_decoder(const json& d) {
    if (d.is_null()) return;
    std::string type = type_of(d);
    if (type == "ByteLevel") {
      byte_level_decoder_ = true;
    } else if (type == "Sequence" && d.contains("decoders") && d["decoders"].is_array() &&
               std::all_of(d["decoders"].begin(), d["decoders"].end(),
                           [](const json& x) { return type_of(x) == "ByteLevel"; })) {
      byte_level_decoder_ = !d["decoders"].empty();
    } else {
      fail(fmt::format("decoder '{}' is not supported (ByteLevel and null are)", type));
    }
  }

  int32_t id_of_token(const std::string& content, const char* what) const {
    for (const auto& a : added_)
      if (a.original == content) return a.id;
    auto it = vocab_.find(content);
    if (it != vocab_.end()) return it->second;
    fail(fmt::format("tokenizer_config.json: {} '{}' is not in the vocabulary", what, content));
  }

  void load_config(std::string_view config_json) {
    auto c = detail::parse_tokenizer_config(config_json, "tokenizer_config.json");
    if (c.has_bos_token && !c.bos_token.empty()) bos_id_ = id_of_token(c.bos_token, "bos_token");
    if (c.has_eos_token && !c.eos_token.empty()) eos_id_ = id_of_token(c.eos_token, "eos_token");
    if (!c.has_bos_token && !prefix_.empty()) bos_id_ = prefix_.front();
    if (!has_template_) {
      // Nothing in the file adds tokens (e.g. the first Llama 3 release, whose
      // ByteLevel post-processor left out <|begin_of_text|>): BOS unless the
      // config says add_bos_token: false; EOS only with add_eos_token: true.
      if (bos_id_ >= 0 && c.add_bos_token != 0) prefix_.push_back(bos_id_);
      if (eos_id_ >= 0 && c.add_eos_token == 1) suffix_.push_back(eos_id_);
    }
  }

  // ----------------------------------------------------------- encoding --

  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  const std::string* token_of(int32_t id) const {
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return &added_[it->second].original;
    if (id >= 0 && static_cast<size_t>(id) < id_to_token_.size() && has_id_[id]) return &id_to_token_[id];
    return nullptr;
  }

  // Splits `text` on the matcher's added tokens (leftmost-longest), applying
  // single_word, lstrip and rstrip.
  void split_added(std::string_view text, const TokenMatcher& matcher,
                   std::vector<Segment>& out) const {
    if (matcher.empty() || text.empty()) {
      if (!text.empty()) out.push_back({text, -1});
      return;
    }
    size_t done = 0;  // end of what has been emitted
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      int k = matcher.match_at(text, i, &len);
      if (k < 0) {
        ++i;
        continue;
      }
      const AddedToken& a = added_[k];
      size_t start = i, stop = i + len;
      if (a.single_word) {
        bool left_ok = start == 0 || !is_word_char(last_cp(text, start));
        size_t l = 0;
        bool right_ok = stop == text.size() || !is_word_char(cp_at(text, stop, &l));
        if (!left_ok || !right_ok) {  // discarded; the search goes on after it
          i = stop;
          continue;
        }
      }
      if (a.lstrip) {
        size_t b = start;
        while (b > done) {
          size_t s;
          uint32_t c = last_cp(text, b, &s);
          if (!is_white_space(c)) break;
          b = s;
        }
        start = b;
      }
      if (a.rstrip) {
        while (stop < text.size()) {
          size_t l;
          uint32_t c = cp_at(text, stop, &l);
          if (!is_white_space(c)) break;
          stop += l;
        }
      }
      if (start > done) out.push_back({text.substr(done, start - done), -1});
      out.push_back({text.substr(start, stop - start), k});
      done = i = stop;
    }
    if (done < text.size()) out.push_back({text.substr(done), -1});
  }

  // Pre-tokenizes and BPE-encodes a piece of normalized text.
  void encode_text(std::string_view text, Scratch& scratch, std::vector<int32_t>& ids) const {
    if (pre_.empty()) {
      encode_word(text, ids);
      return;
    }
    std::vector<std::string_view> cur{text}, next;
    for (const PreStep& step : pre_) {
      next.clear();
      if (const auto* bl = std::get_if<ByteLevelStep>(&step)) {
        byte_level(*bl, cur, next, scratch);
      } else {
        const auto& sp = std::get<SplitStep>(step);
        for (std::string_view piece : cur) split(sp, piece, scratch, next);
      }
      std::swap(cur, next);
    }
    for (std::string_view w : cur)
      if (!w.empty()) encode_word(w, ids);
  }

  void split(const SplitStep& sp, std::string_view s, Scratch& scratch,
             std::vector<std::string_view>& out) const {
    // Regions of s: (start, end, matched).
    struct Region { size_t start, end; bool match; };
    std::vector<Region> regions;
    size_t prev = 0;
    auto on_match = [&](size_t start, size_t end) {
      if (start > prev) regions.push_back({prev, start, false});
      regions.push_back({start, end, true});
      prev = end;
    };
    if (sp.regex >= 0) {
      regexes_[sp.regex]->for_each_match(s, scratch.match_data[sp.regex].md, on_match);
    } else {
      for (size_t pos = s.find(sp.literal); pos != std::string_view::npos;
           pos = s.find(sp.literal, pos + sp.literal.size()))
        on_match(pos, pos + sp.literal.size());
    }
    if (prev < s.size()) regions.push_back({prev, s.size(), false});
    if (sp.invert)
      for (auto& r : regions) r.match = !r.match;

    std::vector<std::pair<size_t, size_t>> pieces;
    switch (sp.behavior) {
      case Behavior::Isolated:
        for (const auto& r : regions) pieces.emplace_back(r.start, r.end);
        break;
      case Behavior::Removed:
        for (const auto& r : regions)
          if (!r.match) pieces.emplace_back(r.start, r.end);
        break;
      case Behavior::MergedWithPrevious: {
        bool prev_match = false;
        for (const auto& r : regions) {
          if (r.match && !prev_match && !pieces.empty()) pieces.back().second = r.end;
          else pieces.emplace_back(r.start, r.end);
          prev_match = r.match;
        }
        break;
      }
      case Behavior::MergedWithNext: {
        bool prev_match = false;
        for (auto r = regions.rbegin(); r != regions.rend(); ++r) {
          if (r->match && !prev_match && !pieces.empty()) pieces.back().first = r->start;
          else pieces.emplace_back(r->start, r->end);
          prev_match = r->match;
        }
        std::reverse(pieces.begin(), pieces.end());
        break;
      }
      case Behavior::Contiguous: {
        bool prev_match = false;
        for (const auto& r : regions) {
          if (r.match == prev_match && !pieces.empty()) pieces.back().second = r.end;
          else pieces.emplace_back(r.start, r.end);
          prev_match = r.match;
        }
        break;
      }
    }
    for (const auto& [a, b] : pieces)
      if (b > a) out.push_back(s.substr(a, b - a));
  }

  void byte_level(const ByteLevelStep& bl, const std::vector<std::string_view>& in,
                  std::vector<std::string_view>& out, Scratch& scratch) const {
    const auto& alphabet = byte_alphabet();
    std::vector<std::string_view> words;
    for (std::string_view piece : in) {
      if (piece.empty()) continue;
      if (bl.add_prefix_space && piece[0] != ' ')
        piece = scratch.arena.emplace_back(" " + std::string(piece));
      words.clear();
      if (bl.regex >= 0) {  // the GPT-2 pattern, Isolated
        split_with(*regexes_[bl.regex], piece, scratch.match_data[bl.regex].md, words);
      } else {
        words.push_back(piece);
      }
      for (std::string_view w : words) {
        std::string& mapped = scratch.arena.emplace_back();
        mapped.reserve(w.size() * 2);
        for (unsigned char c : w) mapped += alphabet.byte_to_utf8[c];
        out.push_back(mapped);
      }
    }
  }

  static void split_with(const Regex& re, std::string_view s, pcre2_match_data* md,
                         std::vector<std::string_view>& out) {
    size_t prev = 0;
    re.for_each_match(s, md, [&](size_t start, size_t end) {
      if (start > prev) out.push_back(s.substr(prev, start - prev));
      out.push_back(s.substr(start, end - start));
      prev = end;
    });
    if (prev < s.size()) out.push_back(s.substr(prev));
  }

  void encode_word(std::string_view word, std::vector<int32_t>& ids) const {
    if (ignore_merges_) {
      auto it = vocab_.find(std::string(word));
      if (it != vocab_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    std::string key(word);
    {
      std::shared_lock lock(cache_mutex_);
      auto it = cache_.find(key);
      if (it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    size_t first = ids.size();
    bpe(word, ids);
    if (word.size() <= kMaxCachedWord) {
      std::unique_lock lock(cache_mutex_);
      if (cache_.size() < kCacheCapacity)
        cache_.emplace(std::move(key), std::vector<int32_t>(ids.begin() + first, ids.end()));
    }
  }

  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool alive;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator<(const Candidate& o) const {  // priority_queue top = lowest rank, leftmost
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };

  // The initial symbols (one per character; byte fallback or unk for a
  // character outside the vocabulary, or nothing when neither is available),
  // then merges applied lowest rank first, leftmost first among equals.
  void bpe(std::string_view word, std::vector<int32_t>& ids) const {
    std::vector<Symbol> sym;
    sym.reserve(word.size());
    auto push = [&](int32_t id) {
      int32_t n = static_cast<int32_t>(sym.size());
      sym.push_back({id, n - 1, n + 1, true});
    };
    bool last_unk = false;
    for (size_t i = 0; i < word.size();) {
      size_t len;
      uint32_t cp = cp_at(word, i, &len);
      int32_t id = cp < char_ids_.size() ? char_ids_[cp] : -1;
      if (id < 0 && cp >= char_ids_.size()) {
        auto it = vocab_.find(std::string(word.substr(i, len)));
        if (it != vocab_.end()) id = it->second;
      }
      if (id >= 0) {
        push(id);
        last_unk = false;
      } else {
        bool done = false;
        if (byte_fallback_) {
          int32_t bytes[4];
          bool all = true;
          for (size_t b = 0; b < len && all; ++b) {
            auto it = vocab_.find(fmt::format("<0x{:02X}>", static_cast<unsigned char>(word[i + b])));
            if (it == vocab_.end()) all = false;
            else bytes[b] = it->second;
          }
          if (all) {
            for (size_t b = 0; b < len; ++b) push(bytes[b]);
            done = true;
            last_unk = false;
          }
        }
        if (!done && unk_id_ >= 0) {
          if (!(fuse_unk_ && last_unk)) push(unk_id_);
          last_unk = true;
        }
      }
      i += len;
    }
    if (sym.empty()) return;
    sym.back().next = -1;

    if (sym.size() > 1) {
      std::vector<Candidate> heap_storage;
      heap_storage.reserve(sym.size());
      std::priority_queue<Candidate> queue(std::less<Candidate>(), std::move(heap_storage));
      auto consider = [&](int32_t pos) {
        int32_t nx = sym[pos].next;
        if (nx < 0) return;
        auto it = merges_.find(pair_key(sym[pos].id, sym[nx].id));
        if (it != merges_.end()) queue.push({it->second.first, pos, it->second.second});
      };
      for (int32_t p = 0; p + 1 < static_cast<int32_t>(sym.size()); ++p) consider(p);
      while (!queue.empty()) {
        Candidate c = queue.top();
        queue.pop();
        Symbol& s = sym[c.pos];
        if (!s.alive || s.next < 0) continue;
        // Stale entry: the pair at this position has changed since it was queued.
        auto it = merges_.find(pair_key(s.id, sym[s.next].id));
        if (it == merges_.end() || it->second.second != c.new_id) continue;
        Symbol& right = sym[s.next];
        s.id = c.new_id;
        right.alive = false;
        s.next = right.next;
        if (s.next >= 0) sym[s.next].prev = c.pos;
        if (s.prev >= 0) consider(s.prev);
        consider(c.pos);
      }
    }
    for (int32_t p = 0; p >= 0; p = sym[p].next) ids.push_back(sym[p].id);
  }

  static constexpr size_t kMaxCachedWord = 256;
  static constexpr size_t kCacheCapacity = 1 << 17;

  std::string name_;
  // model
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  std::vector<int32_t> char_ids_;  // code point (< 1024) -> id of the one-character token
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // pair -> (rank, merged id)
  bool ignore_merges_ = false, byte_fallback_ = false, fuse_unk_ = false;
  int32_t unk_id_ = -1;
  int64_t vocab_size_ = 0;
  // added tokens
  std::vector<AddedToken> added_;
  std::unordered_map<int32_t, int> added_by_id_;
  std::unordered_set<std::string> special_contents_;
  TokenMatcher raw_matcher_, normalized_matcher_;
  // pipeline
  Normalizer normalizer_;
  std::vector<PreStep> pre_;
  std::vector<std::unique_ptr<Regex>> regexes_;  // of the pre-tokenizers, by index
  std::vector<int32_t> prefix_, suffix_;
  bool has_template_ = false;
  bool byte_level_decoder_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1;
  // word cache
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> parse_hf_tokenizer(std::string_view tokenizer_json,
                                              std::string_view config_json,
                                              const std::string& name) {
  return std::make_unique<HfBpeTokenizer>(tokenizer_json, config_json, name);
}

}  // namespace qforge::host
