// Perplexities already measured, kept between runs: `quantize --eval` does
// not measure the original model again for the same model files, text and
// window. Keyed by content (the model's files by size, time and a digest of
// their ends, config.json and the text by digest), the window, the protocol
// and the qforge version. Kept under $QFORGE_CACHE, else
// $XDG_CACHE_HOME/qforge, else ~/.cache/qforge; a cache that cannot be read
// or written is skipped (it only saves time).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace qforge::host {

// The key of perplexity(model in `model_dir`, `stream` of `text_file`, `seqlen`).
std::string perplexity_key(const std::string& model_dir, const std::string& text_file,
                           int64_t seqlen);
std::optional<double> cached_perplexity(const std::string& key);
void remember_perplexity(const std::string& key, double ppl);

}  // namespace qforge::host
