// Calibration data from local files (qforge_host/data/calibration.hpp).
#include "qforge_host/data/calibration.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/base/text.hpp"

namespace qforge::host {
namespace {

const char* const kWs = " \t\r\n\f\v";

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string resolve_format(const CalibrationOptions& opt) {
  static const std::vector<std::string> known = {"text", "jsonl", "csv", "ids-u16", "ids-u32",
                                                 "ids-i64"};
  std::string f = lower(opt.format);
  std::replace(f.begin(), f.end(), '_', '-');
  if (f == "auto") {
    size_t dot = opt.file.find_last_of('.');
    size_t slash = opt.file.find_last_of('/');
    std::string ext =
        dot == std::string::npos || (slash != std::string::npos && dot < slash) ? ""
                                                                               : lower(opt.file.substr(dot));
    if (ext == ".txt") return "text";
    if (ext == ".jsonl") return "jsonl";
    if (ext == ".csv") return "csv";
    if (ext == ".u16") return "ids-u16";
    if (ext == ".u32") return "ids-u32";
    if (ext == ".i64") return "ids-i64";
    throw UsageError(fmt::format(
        "calibration file {}: cannot tell its format from the extension '{}' (known: .txt, .jsonl, "
        ".csv, .u16, .u32, .i64); give the format: text, jsonl, csv, ids-u16, ids-u32 or ids-i64",
        opt.file, ext));
  }
  if (std::find(known.begin(), known.end(), f) == known.end())
    throw UsageError(fmt::format(
        "calibration file {}: unknown format '{}' (known: auto, text, jsonl, csv, ids-u16, ids-u32, "
        "ids-i64)",
        opt.file, opt.format));
  return f;
}

std::string resolve_strategy(const CalibrationOptions& opt) {
  std::string s = lower(opt.strategy);
  std::replace(s.begin(), s.end(), '_', '-');
  if (s == "concat-rand") s = "random";
  if (s == "random" || s == "concat-chunk" || s == "drop-head" || s == "drop-rand" ||
      s == "per-document")
    return s;
  throw UsageError(fmt::format(
      "calibration file {}: unknown strategy '{}' (known: random, concat-chunk, drop-head, "
      "drop-rand, per-document)",
      opt.file, opt.strategy));
}

// ---------------------------------------------------------------- documents --

std::vector<std::string> paragraphs(const std::string& text) {
  std::vector<std::string> docs;
  std::string cur;
  auto flush = [&] {
    std::string d = strip(cur);
    if (!d.empty()) docs.push_back(std::move(d));
    cur.clear();
  };
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    size_t next = end == std::string::npos ? text.size() : end + 1;
    std::string_view line(text.data() + pos, next - pos);
    if (strip(line).empty())
      flush();
    else
      cur.append(line);
    pos = next;
  }
  flush();
  return docs;
}

std::vector<std::string> jsonl_documents(const std::string& text, const std::string& field,
                                         const std::string& name) {
  std::vector<std::string> docs;
  size_t pos = 0;
  for (int64_t n = 1; pos < text.size(); ++n) {
    size_t end = text.find('\n', pos);
    size_t next = end == std::string::npos ? text.size() : end + 1;
    std::string line = strip(std::string_view(text.data() + pos, next - pos));
    pos = next;
    if (line.empty()) continue;
    auto fail = [&](const std::string& what) {
      throw UsageError(fmt::format("calibration file {}:{}: {}", name, n, what));
    };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      std::string what = e.what();
      size_t cut = what.find("] ");  // drop "[json.exception.parse_error.101] "
      fail("not valid JSON: " + (cut == std::string::npos ? what : what.substr(cut + 2)));
    }
    if (!j.is_object()) fail("not a JSON object");
    auto it = j.find(field);
    if (it == j.end()) {
      std::string keys;
      for (auto k = j.begin(); k != j.end(); ++k) keys += (keys.empty() ? "" : ", ") + k.key();
      fail(fmt::format("no field '{}' (fields: {})", field, keys.empty() ? "none" : keys));
    }
    if (!it->is_string()) fail(fmt::format("field '{}' is not a string", field));
    std::string d = strip(it->get<std::string>());
    if (!d.empty()) docs.push_back(std::move(d));
  }
  return docs;
}

std::vector<std::string> csv_documents(const std::string& text, const std::string& field,
                                       const std::string& name) {
  auto records = detail::parse_csv(text, name);
  if (records.empty()) return {};
  const auto& header = records[0].fields;
  auto col_it = std::find(header.begin(), header.end(), field);
  if (col_it == header.end()) {
    std::string cols;
    for (const auto& h : header) cols += (cols.empty() ? "'" : ", '") + h + "'";
    throw UsageError(fmt::format("calibration file {}:{}: no column '{}' in the header (columns: {})",
                                 name, records[0].line, field, cols));
  }
  size_t col = static_cast<size_t>(col_it - header.begin());
  std::vector<std::string> docs;
  for (size_t r = 1; r < records.size(); ++r) {
    if (records[r].fields.size() != header.size())
      throw UsageError(fmt::format("calibration file {}:{}: {} fields, the header has {}", name,
                                   records[r].line, records[r].fields.size(), header.size()));
    std::string d = strip(records[r].fields[col]);
    if (!d.empty()) docs.push_back(std::move(d));
  }
  return docs;
}

// ---------------------------------------------------------------- tokens --

struct Corpus {
  std::vector<int32_t> stream;                 // random / concat-chunk
  std::vector<std::vector<int32_t>> documents; // drop-head / drop-rand / per-document
};

std::vector<int32_t> encode_with_bos(const Tokenizer& tok, const std::string& text,
                                     const std::string& file) {
  std::vector<int32_t> out;
  if (tok.bos_id() >= 0) out.push_back(tok.bos_id());
  try {
    auto ids = tok.encode(text, false);
    out.insert(out.end(), ids.begin(), ids.end());
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("calibration file {}: {}", file, e.what()));
  }
  return out;
}

std::vector<int32_t> read_ids(const std::string& bytes, const std::string& format,
                              const Tokenizer& tok, const std::string& file) {
  size_t width = format == "ids-u16" ? 2 : format == "ids-u32" ? 4 : 8;
  const char* type = format == "ids-u16" ? "uint16" : format == "ids-u32" ? "uint32" : "int64";
  if (bytes.size() % width != 0)
    throw UsageError(fmt::format("calibration file {}: {} bytes is not a whole number of {} ids",
                                 file, grouped(static_cast<int64_t>(bytes.size())), type));
  size_t n = bytes.size() / width;
  int64_t vocab = tok.vocab_size();
  std::vector<int32_t> ids(n);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < n; ++i, p += width) {
    uint64_t u = 0;
    for (size_t b = 0; b < width; ++b) u |= static_cast<uint64_t>(p[b]) << (8 * b);  // little-endian
    int64_t v = static_cast<int64_t>(u);  // int64: two's complement; u16/u32 never negative
    if (v < 0 || v >= vocab)
      throw UsageError(fmt::format(
          "calibration file {}: id {} at position {} is outside the tokenizer's vocabulary [0, {})",
          file, v, grouped(static_cast<int64_t>(i)), vocab));
    ids[i] = static_cast<int32_t>(v);
  }
  return ids;
}

// Documents of a pre-tokenized stream: a new one starts at each BOS.
std::vector<std::vector<int32_t>> split_at_bos(const std::vector<int32_t>& ids, int32_t bos) {
  std::vector<std::vector<int32_t>> docs;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (docs.empty() || (bos >= 0 && ids[i] == bos && !docs.back().empty())) docs.emplace_back();
    docs.back().push_back(ids[i]);
  }
  return docs;
}

// Strips a UTF-8 byte order mark.
std::string without_bom(std::string s) {
  if (s.size() >= 3 && s.compare(0, 3, "\xEF\xBB\xBF") == 0) s.erase(0, 3);
  return s;
}

}  // namespace

namespace detail {

uint64_t CalibrationRng::below(uint64_t n) {
  if (n == 0) throw std::invalid_argument("CalibrationRng::below(0)");
  // Outputs in [0, 2^64 mod n) are rejected so that the rest is a whole
  // number of copies of [0, n); (-n) % n is 2^64 mod n in uint64 arithmetic.
  uint64_t reject_below = (uint64_t{0} - n) % n;
  for (;;) {
    uint64_t x = gen_();
    if (x >= reject_below) return x % n;
  }
}

std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& name) {
  std::vector<CsvRecord> records;
  CsvRecord rec;
  std::string field;
  int64_t line = 1;
  size_t i = 0, n = text.size();
  bool record_started = false;  // any character of the current record seen
  auto end_field = [&] {
    rec.fields.push_back(std::move(field));
    field.clear();
  };
  auto end_record = [&] {
    // A blank line (no character at all) gives no record.
    if (record_started) {
      end_field();
      records.push_back(std::move(rec));
    }
    rec = CsvRecord{};
    field.clear();
    record_started = false;
  };
  // Consumes a line end at i (CRLF, LF or CR); true when there was one.
  auto line_end = [&]() -> bool {
    if (text[i] == '\r') {
      i += (i + 1 < n && text[i + 1] == '\n') ? 2 : 1;
      return true;
    }
    if (text[i] == '\n') {
      ++i;
      return true;
    }
    return false;
  };
  while (i < n) {
    if (!record_started) rec.line = line;
    char c = text[i];
    if (c == '"' && field.empty() && (record_started ? text[i - 1] == ',' : true)) {
      // A quoted field: up to the closing quote; "" is a quote.
      record_started = true;
      int64_t start_line = line;
      ++i;
      for (;;) {
        if (i >= n)
          throw UsageError(fmt::format(
              "calibration file {}:{}: a quoted field is not closed before the end of the file", name,
              start_line));
        if (text[i] == '"') {
          if (i + 1 < n && text[i + 1] == '"') {
            field += '"';
            i += 2;
            continue;
          }
          ++i;
          break;
        }
        if (text[i] == '\n') ++line;
        if (text[i] == '\r' && !(i + 1 < n && text[i + 1] == '\n')) ++line;
        field += text[i++];
      }
      if (i < n && text[i] != ',' && text[i] != '\r' && text[i] != '\n')
        throw UsageError(fmt::format(
            "calibration file {}:{}: text after the closing quote of a field (a quote inside a "
            "quoted field is written \"\")",
            name, line));
      continue;
    }
    if (c == ',') {
      record_started = true;
      end_field();
      ++i;
      continue;
    }
    if (line_end()) {
      end_record();
      ++line;
      continue;
    }
    record_started = true;
    field += c;
    ++i;
  }
  end_record();
  return records;
}

std::vector<std::string> read_documents(const std::string& contents, const std::string& format,
                                        const std::string& text_field, const std::string& name) {
  if (format == "text") return paragraphs(contents);
  if (format == "jsonl") return jsonl_documents(contents, text_field, name);
  if (format == "csv") return csv_documents(contents, text_field, name);
  throw std::invalid_argument("read_documents: format " + format);
}

}  // namespace detail

// The file's tokens: one stream, or one token list per document.
static Corpus read_corpus(const Tokenizer& tok, const CalibrationOptions& opt, const std::string& format,
                   bool per_doc) {
  const std::string& file = opt.file;
  std::string bytes = read_file(file, "calibration file");

  Corpus corpus;
  if (format.rfind("ids-", 0) == 0) {
    corpus.stream = read_ids(bytes, format, tok, file);
    if (per_doc) corpus.documents = split_at_bos(corpus.stream, tok.bos_id());
  } else {
    bytes = without_bom(std::move(bytes));
    // Either tokenizer would take any bytes (SentencePiece as U+FFFD or byte
    // pieces): a binary file given as text is refused instead.
    if (const size_t bad = find_invalid_utf8(bytes); bad != std::string::npos)
      throw UsageError(fmt::format("calibration file {}: not valid UTF-8 (byte {}); token ids go "
                                   "in .u16/.u32/.i64 files", file, bad));
    std::vector<std::string> docs = detail::read_documents(bytes, format, opt.text_field, file);
    if (docs.empty())
      throw UsageError(fmt::format("calibration file {}: empty corpus (no {})", file,
                                   format == "text"  ? "text"
                                   : format == "csv" ? "non-empty '" + opt.text_field + "' cell"
                                                     : "non-empty '" + opt.text_field + "' field"));
    if (per_doc) {
      corpus.documents.resize(docs.size());
      // Documents are independent: tokenize them in parallel (the tokenizer's
      // const members are thread-safe).
      at::parallel_for(0, static_cast<int64_t>(docs.size()), 1, [&](int64_t b, int64_t e) {
        for (int64_t d = b; d < e; ++d) corpus.documents[d] = encode_with_bos(tok, docs[d], file);
      });
    } else if (format == "text") {
      corpus.stream = encode_with_bos(tok, bytes, file);  // the file as it is, as GPTQ does
    } else {
      std::string joined;
      for (size_t d = 0; d < docs.size(); ++d) joined += (d ? "\n\n" : "") + docs[d];
      corpus.stream = encode_with_bos(tok, joined, file);
    }
  }

  return corpus;
}

Calibration load_calibration(const Tokenizer& tok, const CalibrationOptions& opt) {
  const std::string& file = opt.file;
  if (file.empty()) throw UsageError("calibration: no file given");
  if (opt.nsamples < 1)
    throw UsageError(fmt::format("calibration file {}: nsamples must be at least 1 (got {})", file,
                                 opt.nsamples));
  if (opt.seqlen < 1)
    throw UsageError(
        fmt::format("calibration file {}: seqlen must be at least 1 (got {})", file, opt.seqlen));
  if (opt.nsamples > std::numeric_limits<int64_t>::max() / opt.seqlen)
    throw UsageError(fmt::format("calibration file {}: nsamples * seqlen is too large", file));
  const std::string format = resolve_format(opt);
  const std::string strategy = resolve_strategy(opt);
  if ((format == "jsonl" || format == "csv") && opt.text_field.empty())
    throw UsageError(fmt::format("calibration file {}: text_field is empty", file));
  const bool per_doc = strategy == "drop-head" || strategy == "drop-rand" || strategy == "per-document";
  const int64_t n = opt.nsamples, L = opt.seqlen;

  Corpus corpus = read_corpus(tok, opt, format, per_doc);

  Calibration cal;
  cal.file = file;
  cal.format = format;
  cal.strategy = strategy;
  cal.tokens_used = n * L;
  cal.ids = at::empty({n, L}, at::kLong);
  int64_t* out = cal.ids.data_ptr<int64_t>();
  auto put = [&](int64_t row, const std::vector<int32_t>& src, int64_t start) {
    std::copy(src.begin() + start, src.begin() + start + L, out + row * L);
  };
  detail::CalibrationRng rng(opt.seed);

  if (!per_doc) {
    const int64_t T = static_cast<int64_t>(corpus.stream.size());
    cal.corpus_tokens = T;
    if (T == 0) throw UsageError(fmt::format("calibration file {}: empty corpus (no ids)", file));
    if (strategy == "random") {
      if (T < L)
        throw UsageError(fmt::format(
            "calibration file {}: {} tokens is shorter than one window of {} (lower seqlen or use a "
            "longer file)",
            file, grouped(T), grouped(L)));
      for (int64_t r = 0; r < n; ++r)
        put(r, corpus.stream, static_cast<int64_t>(rng.below(static_cast<uint64_t>(T - L + 1))));
      cal.description = fmt::format("{} random windows of {} tokens (seed {}) from {} tokens of {}",
                                    grouped(n), grouped(L), opt.seed, grouped(T), file);
      if (n * L > T)
        log(LogLevel::warn,
            "calibration: {} random windows of {} tokens ({} tokens) from a corpus of {} tokens "
            "overlap heavily; a longer file gives more varied calibration data",
            grouped(n), grouped(L), grouped(n * L), grouped(T));
    } else {  // concat-chunk
      if (T < n * L)
        throw UsageError(fmt::format(
            "calibration file {}: its {} tokens hold {} consecutive windows of {}, {} were asked "
            "for (lower nsamples or seqlen, or use strategy 'random')",
            file, grouped(T), grouped(T / L), grouped(L), grouped(n)));
      for (int64_t r = 0; r < n; ++r) put(r, corpus.stream, r * L);
      cal.description = fmt::format(
          "{} consecutive windows of {} tokens from the start of {} tokens of {}", grouped(n),
          grouped(L), grouped(T), file);
    }
    return cal;
  }

  // Per-document strategies. Documents shorter than seqlen are skipped, as in
  // OneComp (a document of exactly seqlen tokens is used).
  const auto& docs = corpus.documents;
  std::vector<int64_t> eligible;
  int64_t T = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    T += static_cast<int64_t>(docs[d].size());
    if (static_cast<int64_t>(docs[d].size()) >= L) eligible.push_back(static_cast<int64_t>(d));
  }
  cal.corpus_tokens = T;
  cal.documents = static_cast<int64_t>(docs.size());
  cal.documents_short = cal.documents - static_cast<int64_t>(eligible.size());
  if (T == 0) throw UsageError(fmt::format("calibration file {}: empty corpus (no ids)", file));
  if (static_cast<int64_t>(eligible.size()) < n)
    throw UsageError(fmt::format(
        "calibration file {}: {} of its {} documents have at least {} tokens, {} were asked for "
        "(strategy '{}' skips shorter documents; lower nsamples or seqlen, or use strategy "
        "'random')",
        file, grouped(static_cast<int64_t>(eligible.size())), grouped(cal.documents), grouped(L),
        grouped(n), strategy));
  std::string skipped = fmt::format("{} of {} documents shorter than {} tokens skipped",
                                    grouped(cal.documents_short), grouped(cal.documents), grouped(L));
  if (strategy == "per-document") {
    // Fisher-Yates shuffle of every eligible document, then the first n.
    for (size_t i = eligible.size(); i > 1; --i)
      std::swap(eligible[i - 1], eligible[rng.below(i)]);
    for (int64_t r = 0; r < n; ++r) put(r, docs[eligible[r]], 0);
    cal.description = fmt::format(
        "{} documents truncated to {} tokens, in a seeded random order (seed {}; {}) from {} tokens "
        "of {}",
        grouped(n), grouped(L), opt.seed, skipped, grouped(T), file);
  } else if (strategy == "drop-head") {
    for (int64_t r = 0; r < n; ++r) put(r, docs[eligible[r]], 0);
    cal.description = fmt::format(
        "the first {} tokens of {} documents in file order ({}) from {} tokens of {}", grouped(L),
        grouped(n), skipped, grouped(T), file);
  } else {  // drop-rand
    for (int64_t r = 0; r < n; ++r) {
      const auto& d = docs[eligible[r]];
      put(r, d, static_cast<int64_t>(rng.below(d.size() - static_cast<size_t>(L) + 1)));
    }
    cal.description = fmt::format(
        "{} random windows of {} tokens, one in each of the first {} long-enough documents in file "
        "order (seed {}; {}) from {} tokens of {}",
        grouped(n), grouped(L), grouped(n), opt.seed, skipped, grouped(T), file);
  }
  return cal;
}

TrainingSequences load_training_sequences(const Tokenizer& tok, const CalibrationOptions& opt,
                                          int64_t length, int64_t max_samples) {
  const std::string& file = opt.file;
  if (file.empty()) throw UsageError("training data: no file given");
  if (length < 2)
    throw UsageError(fmt::format("training data {}: sequences of {} tokens are too short (at least 2)",
                                 file, length));
  const std::string format = resolve_format(opt);
  if ((format == "jsonl" || format == "csv") && opt.text_field.empty())
    throw UsageError(fmt::format("training data {}: text_field is empty", file));
  std::vector<int32_t> stream;
  try {
    stream = read_corpus(tok, opt, format, false).stream;
  } catch (const UsageError& e) {  // the reader's messages name a "calibration file"
    std::string m = e.what();
    const std::string as_calibration = "calibration file ";
    if (m.rfind(as_calibration, 0) == 0) m = "training data " + m.substr(as_calibration.size());
    throw UsageError(m);
  }
  const int64_t T = static_cast<int64_t>(stream.size());
  if (T < 2) throw UsageError(fmt::format("training data {}: fewer than 2 tokens", file));
  int64_t n = (T + length - 1) / length;
  if (max_samples > 0) n = std::min(n, max_samples);
  TrainingSequences seq;
  seq.ids = at::zeros({n, length}, at::kLong);
  seq.labels = at::full({n, length}, -100, at::kLong);
  int64_t* ids = seq.ids.data_ptr<int64_t>();
  int64_t* labels = seq.labels.data_ptr<int64_t>();
  for (int64_t i = 0; i < std::min(T, n * length); ++i) ids[i] = labels[i] = stream[i];
  const int64_t used = std::min(T, n * length);
  seq.description = fmt::format("{} sequences of {} tokens ({} tokens{}) from {}", grouped(n),
                                grouped(length), grouped(used),
                                used % length ? ", the last one padded" : "", file);
  return seq;
}

}  // namespace qforge::host
