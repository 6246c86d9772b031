// Tokenizers: SentencePiece `tokenizer.model` (BPE models, read natively and
// checked against libsentencepiece, which cannot be linked next to LibTorch)
// and Hugging Face `tokenizer.json` byte-level BPE (Llama 3, Qwen2/3, GPT-2
// style), reproducing the reference implementations' ids exactly
// (tests/tokenizer/ checks them against goldens).
//
// Thread safety: every const member may be called from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace qforge::host {

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // The ids of `text`. add_special = Hugging Face's add_special_tokens:
  //  - tokenizer.json with a TemplateProcessing (Bert, Roberta) post-processor:
  //    the tokens it adds (later Llama 3 files: <|begin_of_text|>);
  //  - otherwise (SentencePiece, or a post-processor that adds nothing, like
  //    the first Llama 3 release's ByteLevel one): BOS when there is one
  //    (SentencePiece: the model's; tokenizer.json: tokenizer_config.json's
  //    bos_token) unless tokenizer_config.json says add_bos_token: false, and
  //    EOS only when it says add_eos_token: true.
  // tokenizer.json: added tokens written in the text (e.g. "<|im_start|>") are
  // recognized, as in Hugging Face; text that is not valid UTF-8 is a
  // UsageError. SentencePiece: the text is encoded literally ("<s>" is three
  // characters) and ill-formed bytes become U+FFFD, as in sentencepiece.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special) const = 0;

  // The text of `ids`. skip_special drops special tokens (tokenizer.json:
  // added tokens marked special; SentencePiece: control pieces and <unk>);
  // without it they are written as their piece ("<s>"). Ids the vocabulary
  // does not have are skipped, as Hugging Face does. Bytes that do not form
  // valid UTF-8 (a cut multi-byte character) become U+FFFD.
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special = true) const = 0;

  // The vocabulary entry of `id` as stored in the file (e.g. "▁the" for
  // SentencePiece, "Ġthe" for byte-level BPE). Throws UsageError for an id the
  // vocabulary does not have.
  virtual std::string piece(int32_t id) const = 0;

  // One more than the largest id (added tokens included).
  virtual int64_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
};

// `path` is a model directory (tokenizer.json preferred when present, else
// tokenizer.model; when a directory has both and its tokenizer.json is refused,
// e.g. a Llama 2 Metaspace pipeline, tokenizer.model is used with a warning) or
// a file (*.json: Hugging Face, anything else: SentencePiece). A
// tokenizer_config.json beside the file, when present, supplies bos/eos tokens
// and add_bos_token/add_eos_token. Throws UsageError naming the file for a
// missing, unreadable, malformed or unsupported file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// A SentencePiece model file; `config_json` is the text of
// tokenizer_config.json ("" when absent). BOS/EOS ids come from the model.
// Supported: BPE models with identity normalization (Llama 1/2, Mistral,
// Gemma, llama2.c); unigram models and precompiled normalization rules are
// refused.
std::unique_ptr<Tokenizer> load_sentencepiece_tokenizer(const std::string& model_file,
                                                        std::string_view config_json = {});

// A Hugging Face tokenizer from the text of tokenizer.json (and of
// tokenizer_config.json, "" when absent); `name` is used in messages.
// Supported: model BPE (byte-level; ignore_merges, byte_fallback, unk_token);
// normalizers NFC/NFD/NFKC/NFKD/Sequence/null; pre-tokenizers Split (regex or
// string, every behavior, invert), ByteLevel, Sequence; post-processors
// TemplateProcessing, ByteLevel, BertProcessing, RobertaProcessing, Sequence;
// decoders ByteLevel, Sequence of ByteLevel, null. Anything else is refused
// with a UsageError that names it.
std::unique_ptr<Tokenizer> parse_hf_tokenizer(std::string_view tokenizer_json,
                                              std::string_view config_json = {},
                                              const std::string& name = "tokenizer.json");

namespace detail {
// What tokenizer_config.json says about BOS/EOS (fields absent when it doesn't).
struct TokenizerConfig {
  bool has_bos_token = false, has_eos_token = false;  // key present (value may be null)
  std::string bos_token, eos_token;                   // "" when null
  int add_bos_token = -1, add_eos_token = -1;         // -1 absent, 0 false, 1 true
};
// Throws UsageError naming `name` when the text is not a JSON object.
TokenizerConfig parse_tokenizer_config(std::string_view config_json, const std::string& name);
}  // namespace detail

}  // namespace qforge::host
