// SentencePiece tokenizer.model (Llama 1/2, Mistral, Gemma, llama2.c models),
// read and run natively: the model protobuf is parsed here and the BPE
// segmentation, normalization and decoding follow sentencepiece 0.1.97
// (`bpe_model.cc`, `normalizer.cc`, `sentencepiece_processor.cc`).
//
// Why not libsentencepiece: Debian's libsentencepiece exports the protobuf
// 3.14 runtime it bundles, and LibTorch loads libprotobuf.so.32; in one
// process the two bind to each other's symbols and the program crashes during
// static initialization. tests/tokenizer/sentencepiece_oracle_test.cpp runs
// this implementation against libsentencepiece (in a test binary without
// LibTorch) so the two cannot drift apart.
//
// Supported: BPE models, identity normalization (an empty
// precompiled_charsmap: what Llama-family models use), byte fallback,
// user-defined, unused, control and unknown pieces, add_dummy_prefix,
// remove_extra_whitespaces, escape_whitespaces. Refused with a UsageError:
// unigram/word/char models, precompiled normalization rules,
// treat_whitespace_as_suffix.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <fstream>
#include <queue>
#include <sstream>
#include <stdexcept>
#include <unordered_map>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace qforge::host {
namespace {

// ------------------------------------------------------ protobuf reading --

struct Malformed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A protobuf wire-format reader for one message (no schema; unknown fields
// are skipped by the caller).
class WireReader {
 public:
  explicit WireReader(std::string_view data) : p_(data) {}

  struct Field {
    uint32_t number = 0;
    int wire = 0;
    uint64_t varint = 0;      // wire 0
    uint32_t fixed32 = 0;     // wire 5
    std::string_view bytes;   // wire 2
  };

  bool next(Field& f) {
    if (pos_ >= p_.size()) return false;
    uint64_t key = varint();
    f.number = static_cast<uint32_t>(key >> 3);
    f.wire = static_cast<int>(key & 7);
    if (f.number == 0) throw Malformed("field number 0");
    switch (f.wire) {
      case 0: f.varint = varint(); break;
      case 1: need(8); pos_ += 8; break;
      case 2: {
        uint64_t len = varint();
        if (len > p_.size() - pos_) throw Malformed("a length runs past the end");
        f.bytes = p_.substr(pos_, len);
        pos_ += len;
        break;
      }
      case 5:
        need(4);
        std::memcpy(&f.fixed32, p_.data() + pos_, 4);  // little-endian hosts only
        pos_ += 4;
        break;
      default: throw Malformed(fmt::format("wire type {} of field {}", f.wire, f.number));
    }
    return true;
  }

 private:
  void need(size_t n) const {
    if (p_.size() - pos_ < n) throw Malformed("truncated");
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      need(1);
      auto b = static_cast<unsigned char>(p_[pos_++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (b < 0x80) return v;
    }
    throw Malformed("a varint is too long");
  }
  std::string_view p_;
  size_t pos_ = 0;
};

float as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// ----------------------------------------------------------------- UTF-8 --

// sentencepiece's DecodeUTF8: the length of the well-formed character at s,
// or 0 for an ill-formed one (which then counts as one byte).
size_t utf8_char_len(const unsigned char* s, size_t n) {
  auto trail = [&](size_t k) { return k < n && (s[k] & 0xC0) == 0x80; };
  if (s[0] < 0x80) return 1;
  uint32_t cp;
  if ((s[0] & 0xE0) == 0xC0 && trail(1)) {
    cp = ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    return cp >= 0x80 ? 2 : 0;
  }
  if ((s[0] & 0xF0) == 0xE0 && trail(1) && trail(2)) {
    cp = ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    return cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF) ? 3 : 0;
  }
  if ((s[0] & 0xF8) == 0xF0 && trail(1) && trail(2) && trail(3)) {
    cp = ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
    return cp >= 0x10000 && cp <= 0x10FFFF ? 4 : 0;
  }
  return 0;
}

const std::string_view kSpaceSymbol = "\xE2\x96\x81";  // U+2581 ▁
const std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum PieceType : int { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

class SentencePieceTokenizer final : public Tokenizer {
 public:
  SentencePieceTokenizer(const std::string& file, std::string_view config_json) : file_(file) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw UsageError(fmt::format("cannot read tokenizer file '{}'", file));
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string bytes = ss.str();
    if (bytes.empty()) throw UsageError(fmt::format("'{}' is empty, not a SentencePiece model", file));
    try {
      parse(bytes);
    } catch (const Malformed& e) {
      throw UsageError(fmt::format("'{}' is not a SentencePiece model (malformed protobuf: {})",
                                   file, e.what()));
    }
    check_and_index();
    auto config = detail::parse_tokenizer_config(config_json, "tokenizer_config.json");
    add_bos_ = config.add_bos_token != 0;  // Llama's default: BOS yes, EOS no
    add_eos_ = config.add_eos_token == 1;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    std::vector<int32_t> out;
    if (add_special && add_bos_ && bos_id_ >= 0) out.push_back(bos_id_);
    std::string normalized = normalize(text);
    segment(normalized, out);
    if (add_special && add_eos_ && eos_id_ >= 0) out.push_back(eos_id_);
    return out;
  }

  // Control ids and <unk> are the special ones: skipped, or written as their
  // piece ("<s>") with the runs between them decoded as sentencepiece does.
  std::string decode(const std::vector<int32_t>& ids, bool skip_special) const override {
    std::string out;
    std::vector<int32_t> run;
    for (int32_t id : ids) {
      if (id < 0 || id >= static_cast<int32_t>(pieces_.size())) continue;  // not in the vocabulary
      int type = pieces_[id].type;
      if (type == kControl || type == kUnknown) {
        if (skip_special) continue;
        out += decode_run(run);
        run.clear();
        out += pieces_[id].text;
        continue;
      }
      run.push_back(id);
    }
    out += decode_run(run);
    return out;
  }

  std::string piece(int32_t id) const override {
    if (id < 0 || id >= static_cast<int32_t>(pieces_.size()))
      throw UsageError(fmt::format("id {} is outside the vocabulary [0, {})", id, pieces_.size()));
    return pieces_[id].text;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }

 private:
  struct Piece {
    std::string text;
    float score = 0;
    int type = kNormal;
  };

  [[noreturn]] void fail(const std::string& what) const {
    throw UsageError(fmt::format("'{}': {}", file_, what));
  }

  // ------------------------------------------------------------ loading --

  void parse(std::string_view bytes) {
    WireReader model(bytes);
    WireReader::Field f;
    while (model.next(f)) {
      if (f.number == 1 && f.wire == 2) {
        Piece p;
        WireReader r(f.bytes);
        WireReader::Field g;
        while (r.next(g)) {
          if (g.number == 1 && g.wire == 2) p.text = std::string(g.bytes);
          else if (g.number == 2 && g.wire == 5) p.score = as_float(g.fixed32);
          else if (g.number == 3 && g.wire == 0) p.type = static_cast<int>(g.varint);
        }
        pieces_.push_back(std::move(p));
      } else if (f.number == 2 && f.wire == 2) {  // TrainerSpec
        WireReader r(f.bytes);
        WireReader::Field g;
        while (r.next(g)) {
          if (g.wire == 0) {
            if (g.number == 3) model_type_ = static_cast<int>(g.varint);
            else if (g.number == 24) whitespace_as_suffix_ = g.varint != 0;
            else if (g.number == 35) byte_fallback_ = g.varint != 0;
          } else if (g.wire == 2) {
            if (g.number == 46) bos_piece_ = std::string(g.bytes);
            else if (g.number == 47) eos_piece_ = std::string(g.bytes);
          }
        }
      } else if ((f.number == 3 || f.number == 5) && f.wire == 2) {  // (de)normalizer spec
        WireReader r(f.bytes);
        WireReader::Field g;
        while (r.next(g)) {
          if (g.number == 2 && g.wire == 2 && !g.bytes.empty()) {
            (f.number == 3 ? charsmap_ : denormalizer_charsmap_) = true;
          } else if (f.number == 3 && g.wire == 0) {
            if (g.number == 3) add_dummy_prefix_ = g.varint != 0;
            else if (g.number == 4) remove_extra_whitespaces_ = g.varint != 0;
            else if (g.number == 5) escape_whitespaces_ = g.varint != 0;
          }
        }
      }
    }
  }

  void check_and_index() {
    if (pieces_.empty()) fail("not a SentencePiece model (no pieces)");
    if (model_type_ != 2) {
      static const char* kNames[] = {"?", "unigram", "BPE", "word", "char"};
      fail(fmt::format("SentencePiece {} models are not supported (only BPE)",
                       model_type_ >= 1 && model_type_ <= 4 ? kNames[model_type_] : "unknown-type"));
    }
    if (charsmap_ || denormalizer_charsmap_)
      fail("precompiled SentencePiece normalization rules are not supported (only identity)");
    if (whitespace_as_suffix_) fail("treat_whitespace_as_suffix is not supported");

    std::vector<bool> byte_found(256, false);
    for (size_t i = 0; i < pieces_.size(); ++i) {
      const Piece& p = pieces_[i];
      auto id = static_cast<int32_t>(i);
      if (p.text.empty()) fail(fmt::format("piece {} is empty", i));
      if (p.type < kNormal || p.type > kByte) fail(fmt::format("piece {} has unknown type {}", i, p.type));
      bool normal = p.type == kNormal || p.type == kUserDefined || p.type == kUnused;
      if (!(normal ? normal_ : reserved_).emplace(p.text, id).second)
        fail(fmt::format("piece '{}' is defined twice", p.text));
      if (p.type == kUserDefined) user_defined_.emplace_back(p.text);
      if (p.type == kUnknown) {
        if (unk_id_ >= 0) fail("more than one unknown piece");
        unk_id_ = id;
      }
      if (p.type == kByte) {
        if (!byte_fallback_) fail(fmt::format("byte piece {} without byte_fallback", p.text));
        int b = piece_to_byte(p.text);
        if (b < 0) fail(fmt::format("invalid byte piece '{}'", p.text));
        byte_found[b] = true;
        byte_ids_[b] = id;
      }
    }
    if (unk_id_ < 0) fail("no unknown piece (<unk>)");
    if (byte_fallback_)
      for (int b = 0; b < 256; ++b)
        if (!byte_found[b]) fail(fmt::format("byte_fallback without the byte piece <0x{:02X}>", b));
    // Longest first, so the first hit is the longest match.
    std::sort(user_defined_.begin(), user_defined_.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    auto control = [&](const std::string& piece) {
      int32_t id = piece_to_id(piece);
      return pieces_[id].type == kControl ? id : -1;
    };
    bos_id_ = control(bos_piece_);
    eos_id_ = control(eos_piece_);
  }

  static int piece_to_byte(const std::string& s) {  // "<0x41>" -> 65
    if (s.size() != 6 || s.compare(0, 3, "<0x") != 0 || s[5] != '>') return -1;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(s[3]), lo = hex(s[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }

  int32_t piece_to_id(std::string_view s) const {
    if (auto it = reserved_.find(s); it != reserved_.end()) return it->second;
    if (auto it = normal_.find(s); it != normal_.end()) return it->second;
    return unk_id_;
  }

  // ----------------------------------------------------------- encoding --

  // Identity normalization: ill-formed bytes become U+FFFD one byte at a
  // time; with remove_extra_whitespaces, leading/trailing spaces go and runs
  // collapse to one; a dummy prefix space; spaces escaped to U+2581.
  std::string normalize(std::string_view in) const {
    std::string out;
    if (remove_extra_whitespaces_) {
      size_t k = 0;
      while (k < in.size() && in[k] == ' ') ++k;
      in.remove_prefix(k);
    }
    if (in.empty()) return out;
    out.reserve(in.size() * 3 / 2 + 3);
    auto space = [&] {
      if (escape_whitespaces_) out.append(kSpaceSymbol);
      else out += ' ';
    };
    if (add_dummy_prefix_) space();
    bool prev_space = remove_extra_whitespaces_;
    auto* p = reinterpret_cast<const unsigned char*>(in.data());
    for (size_t i = 0; i < in.size();) {
      size_t len = utf8_char_len(p + i, in.size() - i);
      if (len == 0) {
        out.append(kReplacement);
        prev_space = false;
        ++i;
        continue;
      }
      if (len == 1 && p[i] == ' ') {
        if (!prev_space) space();
        prev_space = remove_extra_whitespaces_;
      } else {
        out.append(in.data() + i, len);
        prev_space = false;
      }
      i += len;
    }
    if (remove_extra_whitespaces_) {
      std::string_view sp = escape_whitespaces_ ? kSpaceSymbol : std::string_view(" ");
      while (out.size() >= sp.size() && std::string_view(out).substr(out.size() - sp.size()) == sp)
        out.resize(out.size() - sp.size());
    }
    return out;
  }

  struct Symbol {
    uint32_t start, size;
    int32_t prev, next;
    bool freeze;
  };
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t size;
    bool operator<(const Candidate& o) const {  // top: highest score, then leftmost
      return score < o.score || (score == o.score && left > o.left);
    }
  };

  // BPE over the whole normalized text: symbols are characters (user-defined
  // pieces whole and frozen); the adjacent pair whose concatenation is a piece
  // with the highest score merges first, the leftmost among equal scores.
  void segment(const std::string& text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::vector<Symbol> sym;
    sym.reserve(text.size());
    auto* p = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t i = 0; i < text.size();) {
      size_t len = 0;
      bool freeze = false;
      for (const auto& u : user_defined_)
        if (u.size() <= text.size() - i && std::memcmp(text.data() + i, u.data(), u.size()) == 0) {
          len = u.size();
          freeze = true;
          break;
        }
      if (!freeze) {
        len = utf8_char_len(p + i, text.size() - i);
        if (len == 0) len = 1;
      }
      auto n = static_cast<int32_t>(sym.size());
      sym.push_back({static_cast<uint32_t>(i), static_cast<uint32_t>(len), n - 1, n + 1, freeze});
      i += len;
    }
    sym.back().next = -1;

    std::vector<Candidate> storage;
    storage.reserve(sym.size());
    std::priority_queue<Candidate> agenda(std::less<Candidate>(), std::move(storage));
    // Merged piece -> the two it was made of, for unused pieces only.
    std::unordered_map<std::string_view, std::pair<std::string_view, std::string_view>> unmerge;
    auto view = [&](uint32_t start, uint32_t size) { return std::string_view(text).substr(start, size); };
    auto consider = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0 || sym[left].freeze || sym[right].freeze) return;
      uint32_t size = sym[left].size + sym[right].size;
      auto it = normal_.find(view(sym[left].start, size));
      if (it == normal_.end()) return;
      agenda.push({pieces_[it->second].score, left, right, size});
      if (pieces_[it->second].type == kUnused)
        unmerge[view(sym[left].start, size)] = {view(sym[left].start, sym[left].size),
                                                view(sym[right].start, sym[right].size)};
    };
    for (int32_t i = 1; i < static_cast<int32_t>(sym.size()); ++i) consider(i - 1, i);
    while (!agenda.empty()) {
      Candidate c = agenda.top();
      agenda.pop();
      Symbol& l = sym[c.left];
      Symbol& r = sym[c.right];
      if (l.size == 0 || r.size == 0 || l.size + r.size != c.size) continue;  // stale
      l.size += r.size;
      l.next = r.next;
      if (r.next >= 0) sym[r.next].prev = c.left;
      r.size = 0;
      consider(l.prev, c.left);
      consider(c.left, l.next);
    }

    bool prev_unk = false;
    auto emit = [&](std::string_view piece) {
      int32_t id = piece_to_id(piece);
      bool unk = id == unk_id_;
      if (unk && byte_fallback_) {
        for (unsigned char b : piece) out.push_back(byte_ids_[b]);
      } else if (!(unk && prev_unk)) {  // a run of unknown pieces is one <unk>
        out.push_back(id);
      }
      prev_unk = unk;
    };
    // An unused piece is split back into the pieces it was merged from.
    std::function<void(std::string_view)> resegment = [&](std::string_view w) {
      int32_t id = piece_to_id(w);
      auto it = pieces_[id].type == kUnused ? unmerge.find(w) : unmerge.end();
      if (it == unmerge.end()) {
        emit(w);
        return;
      }
      resegment(it->second.first);
      resegment(it->second.second);
    };
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
      std::string_view w = view(sym[i].start, sym[i].size);
      if (unmerge.empty()) emit(w);
      else resegment(w);
    }
  }

  // ----------------------------------------------------------- decoding --

  // sentencepiece's Decode for ids without control/unknown ones: U+2581 ->
  // space; the leading space(s) of the text dropped (all of them with
  // remove_extra_whitespaces, else the first when add_dummy_prefix); runs of
  // byte pieces decoded as UTF-8, each ill-formed byte becoming U+FFFD.
  std::string decode_run(const std::vector<int32_t>& ids) const {
    std::string text, bytes;
    bool at_start = true;  // still expecting the dummy-prefix space
    bool strip_leading = add_dummy_prefix_ || remove_extra_whitespaces_;
    auto flush_bytes = [&] {
      auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
      for (size_t i = 0; i < bytes.size();) {
        size_t len = utf8_char_len(p + i, bytes.size() - i);
        if (len == 0) {
          text.append(kReplacement);
          ++i;
        } else {
          text.append(bytes, i, len);
          i += len;
        }
      }
      bytes.clear();
    };
    bool bos_ws_seen = false;
    for (int32_t id : ids) {
      const Piece& pc = pieces_[id];
      if (pc.type == kByte) {
        bytes += static_cast<char>(piece_to_byte(pc.text));
        continue;
      }
      flush_bytes();
      if (bos_ws_seen || !text.empty()) at_start = false;
      std::string_view w = pc.text;
      bos_ws_seen = false;
      if (at_start && strip_leading && w.substr(0, kSpaceSymbol.size()) == kSpaceSymbol) {
        w.remove_prefix(kSpaceSymbol.size());
        bos_ws_seen = !remove_extra_whitespaces_;
      }
      for (size_t i = 0; i < w.size();) {
        if (w.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
          text += ' ';
          i += kSpaceSymbol.size();
        } else {
          text += w[i++];
        }
      }
    }
    flush_bytes();
    return text;
  }

  std::string file_;
  std::vector<Piece> pieces_;
  std::unordered_map<std::string_view, int32_t> normal_, reserved_;  // views into pieces_
  std::vector<std::string> user_defined_;
  int32_t byte_ids_[256] = {};
  int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1;
  // TrainerSpec / NormalizerSpec, with the protobuf defaults
  int model_type_ = 1;
  bool byte_fallback_ = false, whitespace_as_suffix_ = false;
  std::string bos_piece_ = "<s>", eos_piece_ = "</s>";
  bool add_dummy_prefix_ = true, remove_extra_whitespaces_ = true, escape_whitespaces_ = true;
  bool charsmap_ = false, denormalizer_charsmap_ = false;
  bool add_bos_ = true, add_eos_ = false;
};

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file,
                                                        std::string_view config_json) {
  return std::make_unique<SentencePieceTokenizer>(model_file, config_json);
}

}  // namespace qforge::host
