#include "qforge_host/eval/ppl_cache.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/digest.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/text.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {
namespace {

fs::path cache_dir() {
  if (const char* d = std::getenv("QFORGE_CACHE"); d != nullptr && *d) return d;
  if (const char* d = std::getenv("XDG_CACHE_HOME"); d != nullptr && *d) return fs::path(d) / "qforge";
  if (const char* d = std::getenv("HOME"); d != nullptr && *d) return fs::path(d) / ".cache" / "qforge";
  return {};
}

fs::path entry(const std::string& key) {
  const fs::path dir = cache_dir();
  return dir.empty() ? fs::path() : dir / "perplexity" / (key + ".json");
}

}  // namespace

std::string perplexity_key(const std::string& model_dir, const std::string& text_file,
                           int64_t seqlen) {
  const json what = {{"qforge", QFORGE_VERSION},
                     {"protocol", "whole file, one BOS, non-overlapping windows, float32"},
                     {"model", model_files_identity(model_dir)},
                     {"text", file_digest(text_file)},
                     {"seqlen", seqlen}};
  return text_digest(what.dump());
}

std::optional<double> cached_perplexity(const std::string& key) {
  const fs::path p = entry(key);
  std::error_code ec;
  if (p.empty() || !fs::is_regular_file(p, ec)) return std::nullopt;
  try {
    const json j = json::parse(read_file(p.string(), "perplexity cache", 1 << 16));
    const double ppl = j.at("perplexity").get<double>();
    if (std::isfinite(ppl) && ppl >= 1) return ppl;
  } catch (const std::exception& e) {
    log(LogLevel::debug, "{}: ignored ({})", p.string(), e.what());
  }
  return std::nullopt;
}

void remember_perplexity(const std::string& key, double ppl) {
  const fs::path p = entry(key);
  if (p.empty()) return;
  try {
    fs::create_directories(p.parent_path());
    write_text_atomic(p.string(), json{{"perplexity", ppl}}.dump() + "\n");
  } catch (const std::exception& e) {
    log(LogLevel::debug, "perplexity cache {} not written: {}", p.string(), e.what());
  }
}

}  // namespace qforge::host
