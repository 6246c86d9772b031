// Evaluation: perplexity (fixed non-overlapping windows), multiple-choice
// accuracy (lm-eval style), greedy generation with a KV cache.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace qforge::host {

class Model;
class Tokenizer;

// Progress callback: done, total (units of the task).
using Progress = std::function<void(int64_t, int64_t)>;

// The token stream for perplexity. `split_on` empty: [BOS] + encode(whole text)
// (one BOS, no EOS). Otherwise the text is split on `split_on`, each piece
// stripped of surrounding whitespace, empty pieces dropped, and the stream is
// the concatenation of [BOS] + encode(piece).
std::vector<int32_t> perplexity_stream(const Tokenizer& tok, const std::string& text,
                                       const std::string& split_on);

struct PerplexityResult {
  double ppl = 0, mean_nll = 0;
  int64_t tokens = 0;           // stream length
  int64_t seqlen = 0;
  int64_t windows = 0;          // floor(tokens / seqlen)
  int64_t predicted = 0;        // windows * (seqlen - 1)
  int64_t dropped_tail = 0;     // tokens after the last whole window
  std::vector<double> window_nll;  // mean NLL per window
};

// Each window of `seqlen` tokens is evaluated from an empty context; every
// token but the window's first is predicted. `batch` windows run at once.
PerplexityResult perplexity(const Model& model, const std::vector<int32_t>& stream, int64_t seqlen,
                            int64_t batch = 8, const Progress& progress = {});

struct ChoiceItem {
  std::string context;
  std::vector<std::string> choices;
  int64_t label = 0;
};
// Reads a JSONL file of {"context", "choices", "label"}; throws UsageError
// naming the file and line for a malformed item.
std::vector<ChoiceItem> load_choices(const std::string& path);

struct ChoiceResult {
  int64_t items = 0, correct = 0, correct_norm = 0;
  double acc = 0, acc_norm = 0;
};
// lm-eval multiple choice: whole = encode(context + choice) with BOS; the
// choice's tokens are whole[len(encode(context) with BOS):]; score = sum of
// their log-probabilities; acc by the raw sum, acc_norm by the sum divided by
// the choice's length in bytes.
ChoiceResult multiple_choice(const Model& model, const Tokenizer& tok,
                             const std::vector<ChoiceItem>& items, const Progress& progress = {});

// Greedy decoding (argmax, first index on ties) with a KV cache, so each new
// token costs one position. Stops after `max_new` tokens or at `stop_id`
// (not included). Returns the new tokens.
std::vector<int32_t> generate_greedy(const Model& model, const std::vector<int32_t>& prompt,
                                     int64_t max_new, int64_t stop_id);

}  // namespace qforge::host
