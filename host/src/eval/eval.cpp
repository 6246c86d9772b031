// Perplexity, multiple choice and greedy generation (qforge_host/eval/eval.hpp).
#include "qforge_host/eval/eval.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>
#include <sstream>
#include <nlohmann/json.hpp>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/base/text.hpp"

namespace qforge::host {
namespace {

at::Tensor as_ids(const std::vector<int32_t>& ids) {
  return at::tensor(std::vector<int64_t>(ids.begin(), ids.end()), at::kLong).unsqueeze(0);
}

// Sum of log p(ids[k] | ids[:k]) for k in [from, n) from one forward pass.
double continuation_logprob(const Model& model, const std::vector<int32_t>& ids, size_t from) {
  at::Tensor logits = model.forward(as_ids(ids)).squeeze(0);  // [n, V]
  at::Tensor logp = at::log_softmax(logits.to(at::kDouble), -1);
  at::Tensor targets = at::tensor(std::vector<int64_t>(ids.begin() + from, ids.end()), at::kLong);
  at::Tensor rows = logp.narrow(0, from - 1, ids.size() - from);
  return rows.gather(1, targets.unsqueeze(1)).sum().item<double>();
}

}  // namespace

std::vector<int32_t> perplexity_stream(const Tokenizer& tok, const std::string& text,
                                       const std::string& split_on) {
  if (const size_t bad = find_invalid_utf8(text); bad != std::string::npos)
    throw UsageError(fmt::format("the evaluation text is not valid UTF-8 (byte {})", bad));
  std::vector<int32_t> out;
  auto add = [&](const std::string& piece) {
    if (tok.bos_id() >= 0) out.push_back(tok.bos_id());
    auto ids = tok.encode(piece, false);
    out.insert(out.end(), ids.begin(), ids.end());
  };
  if (split_on.empty()) {
    add(text);
    return out;
  }
  size_t start = 0;
  while (start <= text.size()) {
    size_t at = text.find(split_on, start);
    std::string piece = strip(text.substr(start, at == std::string::npos ? std::string::npos : at - start));
    if (!piece.empty()) add(piece);
    if (at == std::string::npos) break;
    start = at + split_on.size();
  }
  return out;
}

namespace {
// A NaN or Inf result is refused, naming the tensor that caused it.
[[noreturn]] void throw_non_finite(const Model& model, const char* consequence) {
  const std::string bad = model.first_non_finite_tensor();
  throw ModelFileError(
      bad.empty() ? fmt::format("the model's log-probabilities are not finite (an overflow in "
                                "the forward pass?); {}", consequence)
                  : fmt::format("tensor '{}' holds non-finite values; {}", bad, consequence));
}
}  // namespace

PerplexityResult perplexity(const Model& model, const std::vector<int32_t>& stream, int64_t seqlen,
                            int64_t batch, const Progress& progress) {
  if (seqlen < 2) throw UsageError("perplexity: seqlen must be at least 2");
  PerplexityResult r;
  r.tokens = static_cast<int64_t>(stream.size());
  r.seqlen = seqlen;
  r.windows = r.tokens / seqlen;
  r.dropped_tail = r.tokens - r.windows * seqlen;
  r.predicted = r.windows * (seqlen - 1);
  if (r.windows == 0)
    throw UsageError(fmt::format("perplexity: {} tokens is less than one window of {}", r.tokens,
                                 seqlen));
  at::Tensor all = at::tensor(std::vector<int64_t>(stream.begin(), stream.begin() + r.windows * seqlen),
                              at::kLong).view({r.windows, seqlen});
  double total = 0;
  for (int64_t w = 0; w < r.windows; w += batch) {
    int64_t nb = std::min(batch, r.windows - w);
    at::Tensor ids = all.narrow(0, w, nb);
    at::Tensor logits = model.forward(ids);  // [nb, seqlen, V] float32
    at::Tensor logp = at::log_softmax(logits.narrow(1, 0, seqlen - 1), -1);
    at::Tensor nll = -logp.gather(2, ids.narrow(1, 1, seqlen - 1).unsqueeze(2)).squeeze(2);
    at::Tensor per_window = nll.to(at::kDouble).mean(1);
    for (int64_t k = 0; k < nb; ++k) r.window_nll.push_back(per_window[k].item<double>());
    total += nll.to(at::kDouble).sum().item<double>();
    if (progress) progress(w + nb, r.windows);
  }
  r.mean_nll = total / static_cast<double>(r.predicted);
  r.ppl = std::exp(r.mean_nll);
  if (!std::isfinite(r.mean_nll)) throw_non_finite(model, "no perplexity");
  return r;
}

std::vector<ChoiceItem> load_choices(const std::string& path) {
  std::istringstream in(read_file(path, "multiple-choice file"));  // refuses FIFOs and the like
  std::vector<ChoiceItem> items;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (strip(line).empty()) continue;
    auto fail = [&](const std::string& what) {
      throw UsageError(fmt::format("{}:{}: {}", path, n, what));
    };
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail("not a JSON object");
    if (!j.contains("context") || !j["context"].is_string()) fail("'context' must be a string");
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2)
      fail("'choices' must be an array of at least two strings");
    if (!j.contains("label") || !j["label"].is_number_integer()) fail("'label' must be an integer");
    ChoiceItem item;
    item.context = j["context"].get<std::string>();
    for (const auto& c : j["choices"]) {
      if (!c.is_string() || c.get<std::string>().empty()) fail("every choice must be a non-empty string");
      item.choices.push_back(c.get<std::string>());
    }
    item.label = j["label"].get<int64_t>();
    if (item.label < 0 || item.label >= static_cast<int64_t>(item.choices.size()))
      fail("'label' is not the index of a choice");
    items.push_back(std::move(item));
  }
  if (items.empty()) throw UsageError(fmt::format("{}: no items", path));
  return items;
}

ChoiceResult multiple_choice(const Model& model, const Tokenizer& tok,
                             const std::vector<ChoiceItem>& items, const Progress& progress) {
  ChoiceResult r;
  for (const auto& item : items) {
    std::vector<int32_t> ctx = tok.encode(item.context, true);
    int64_t best = 0, best_norm = 0;
    double best_score = -INFINITY, best_score_norm = -INFINITY;
    for (size_t k = 0; k < item.choices.size(); ++k) {
      std::vector<int32_t> whole = tok.encode(item.context + item.choices[k], true);
      if (whole.size() <= ctx.size())
        throw UsageError(fmt::format("choice '{}' adds no tokens to its context", item.choices[k]));
      double score = continuation_logprob(model, whole, ctx.size());
      if (!std::isfinite(score)) throw_non_finite(model, "no accuracy");
      double norm = score / static_cast<double>(item.choices[k].size());
      if (score > best_score) best_score = score, best = static_cast<int64_t>(k);
      if (norm > best_score_norm) best_score_norm = norm, best_norm = static_cast<int64_t>(k);
    }
    r.correct += best == item.label;
    r.correct_norm += best_norm == item.label;
    ++r.items;
    if (progress) progress(r.items, static_cast<int64_t>(items.size()));
  }
  r.acc = static_cast<double>(r.correct) / static_cast<double>(r.items);
  r.acc_norm = static_cast<double>(r.correct_norm) / static_cast<double>(r.items);
  return r;
}

std::vector<int32_t> generate_greedy(const Model& model, const std::vector<int32_t>& prompt,
                                     int64_t max_new, int64_t stop_id) {
  if (prompt.empty()) throw UsageError("generate: the prompt has no tokens");
  int64_t capacity = static_cast<int64_t>(prompt.size()) + std::max<int64_t>(max_new, 0);
  KVCache cache = model.new_cache(1, capacity);
  std::vector<int32_t> out;
  at::Tensor logits = model.forward(as_ids(prompt), &cache);
  for (int64_t step = 0; step < max_new; ++step) {
    int32_t next = static_cast<int32_t>(logits[0][-1].argmax().item<int64_t>());
    if (next == stop_id) break;
    out.push_back(next);
    if (step + 1 == max_new) break;
    logits = model.forward(at::tensor({static_cast<int64_t>(next)}, at::kLong).view({1, 1}), &cache);
  }
  return out;
}

}  // namespace qforge::host
