// Calibration data: token windows cut from a local file, reproducibly.
//
// Files (`format` "auto" picks by extension, case-insensitive):
//   text     .txt    plain UTF-8 text. Documents (for the per-document
//                    strategies) are paragraphs: runs of lines separated by
//                    blank (whitespace-only) lines.
//   jsonl    .jsonl  one JSON object per line, the document in `text_field`
//                    (a string); blank lines are skipped.
//   csv      .csv    RFC 4180: a header row, comma-separated fields, quoted
//                    fields may hold commas, newlines and "" (a quote); CRLF,
//                    LF or CR line ends; blank lines are skipped; every row
//                    has the header's number of fields. The document is column
//                    `text_field`. Like Python's csv module, a quote inside an
//                    unquoted field is kept as it is; text after a closing
//                    quote (`"ab"c`) is an error.
//   ids-u16  .u16    pre-tokenized: raw little-endian token ids (uint16,
//   ids-u32  .u32    uint32, int64), used as they are (no BOS added). Every id
//   ids-i64  .i64    must be below the tokenizer's vocab_size. Documents start
//                    at each BOS id (the whole stream is one document when the
//                    tokenizer has no BOS or the stream does not contain it).
// A UTF-8 byte order mark at the start of a text/jsonl/csv file is ignored.
// Text documents are stripped of surrounding whitespace; empty ones dropped.
//
// The token stream (strategies "random" and "concat-chunk") is, as in GPTQ's
// get_wikitext2 / get_c4 and OneComp's concat_* strategies, the corpus
// tokenized once as a single text: [BOS] + encode(text), where text is the
// whole .txt file as it is, or the JSONL/CSV documents joined with "\n\n".
// Per-document strategies tokenize each document alone: [BOS] + encode(doc).
// (BOS only when the tokenizer has one; never EOS.)
//
// Strategies (an underscore may stand for a hyphen: "drop_head"):
//   random       nsamples windows of seqlen tokens from the stream, the start
//   (concat-rand) of each drawn uniformly from [0, tokens - seqlen] (windows
//                may overlap) — the GPTQ/AWQ default, OneComp's concat_rand.
//                GPTQ's get_wikitext2 draws from [0, tokens - seqlen - 1]
//                (Python's randint is inclusive), so its last window never
//                reaches the final token; here every window can be drawn.
//   concat-chunk the first nsamples consecutive non-overlapping windows of the
//                stream; fails when it holds fewer than nsamples*seqlen tokens
//                (OneComp's concat_chunk_align, which takes fewer windows with
//                a warning instead; plain concat_chunk takes all windows).
//   drop-head    OneComp's drop_head (onecomp/utils/calibration.py, docs
//                user-guide/configuration.md) — per document, NOT consecutive
//                windows of the stream (that is concat-chunk above): each
//                document tokenized alone, documents shorter than seqlen
//                tokens skipped, the first seqlen tokens of the others, in
//                file order, until nsamples; fails when too few documents are
//                long enough.
//   drop-rand    OneComp's drop_rand: as drop-head, but a seeded uniformly
//                random window of seqlen tokens inside each long document.
//   per-document as drop-head, but the long-enough documents are taken in a
//                seeded random order (a shuffle of all of them, then the
//                first nsamples).
//
// Randomness is std::mt19937_64(seed) (its output is fixed by the C++
// standard) with this file's own unbiased mapping to an integer range, so the
// same seed gives the same ids with every compiler and standard library.
//
// Every problem with the options or the file (missing or unreadable file,
// unknown format or strategy, a malformed JSON line or CSV row (with its line
// number), a missing field, an empty corpus, a corpus too short for the
// request, ids outside the vocabulary, nsamples/seqlen < 1) is a UsageError
// whose message names the file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace qforge::host {

class Tokenizer;

struct CalibrationOptions {
  std::string file;
  std::string format = "auto";     // auto | text | jsonl | csv | ids-u16 | ids-u32 | ids-i64
  std::string text_field = "text"; // jsonl key / csv column holding the document
  int64_t nsamples = 128;
  int64_t seqlen = 2048;
  uint64_t seed = 0;
  std::string strategy = "random"; // random | concat-chunk | drop-head | drop-rand | per-document
};

struct Calibration {
  at::Tensor ids;             // [nsamples, seqlen] int64 (CPU)
  std::string file;
  std::string format;         // the format used (never "auto")
  std::string strategy;       // the canonical strategy name (hyphenated)
  int64_t corpus_tokens = 0;  // tokens in the tokenized corpus (stream, or all documents)
  int64_t tokens_used = 0;    // nsamples * seqlen
  int64_t documents = 0;      // documents in the file (per-document strategies; else 0)
  int64_t documents_short = 0;  // of which shorter than seqlen (skipped)
  std::string description;    // one line, e.g. "128 random windows of 2048 tokens (seed 0) from 1,234,567 tokens of FILE"
};

Calibration load_calibration(const Tokenizer& tok, const CalibrationOptions& opt);

// Training data for post-processes: the file's token stream (as strategy
// concat-chunk reads it; opt.file, format and text_field are used) cut into
// consecutive sequences of `length` tokens, at most `max_samples` (0: all)
// from the start. labels = ids, except the padding that fills the last,
// shorter sequence (token 0, label -100).
struct TrainingSequences {
  at::Tensor ids, labels;   // [n, length] int64
  std::string description;  // one line
};
TrainingSequences load_training_sequences(const Tokenizer& tok, const CalibrationOptions& opt,
                                          int64_t length, int64_t max_samples);

namespace detail {
// Exposed for tests.
// The seeded generator: std::mt19937_64 with an unbiased mapping to [0, n)
// (rejection of the lowest 2^64 mod n outputs, then modulo), identical on
// every platform (std::uniform_int_distribution is not).
class CalibrationRng {
 public:
  explicit CalibrationRng(uint64_t seed) : gen_(seed) {}
  uint64_t below(uint64_t n);  // n >= 1
 private:
  std::mt19937_64 gen_;
};
// RFC 4180 CSV records (fields), with the 1-based line each record starts on.
// Blank lines give no record. Throws UsageError naming `name` and the line
// for an unterminated quoted field or text after a closing quote.
struct CsvRecord {
  std::vector<std::string> fields;
  int64_t line = 0;
};
std::vector<CsvRecord> parse_csv(const std::string& text, const std::string& name);
// The documents of a text/jsonl/csv file's contents, as load_calibration
// reads them (stripped, empty ones dropped; no BOM handling here).
std::vector<std::string> read_documents(const std::string& contents, const std::string& format,
                                        const std::string& text_field, const std::string& name);
}  // namespace detail

}  // namespace qforge::host
