// load_tokenizer: finds the tokenizer file of a model directory and picks the
// implementation; tokenizer_config.json parsing shared by both.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/base/text.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {

Tokenizer::~Tokenizer() = default;

namespace detail {

TokenizerConfig parse_tokenizer_config(std::string_view config_json, const std::string& name) {
  TokenizerConfig out;
  if (config_json.empty()) return out;
  json j = json::parse(config_json.begin(), config_json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    throw UsageError(fmt::format("{}: not a JSON object", name));
  // A token is a string, null, or an AddedToken object {"content": ...}.
  auto token = [&](const char* key, bool& has, std::string& value) {
    auto it = j.find(key);
    if (it == j.end()) return;
    has = true;
    if (it->is_string()) {
      value = it->get<std::string>();
    } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
      value = (*it)["content"].get<std::string>();
    } else if (!it->is_null()) {
      throw UsageError(fmt::format("{}: '{}' must be a string, null or {{\"content\": ...}}", name, key));
    }
  };
  auto flag = [&](const char* key, int& value) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return;
    if (!it->is_boolean()) throw UsageError(fmt::format("{}: '{}' must be true or false", name, key));
    value = it->get<bool>() ? 1 : 0;
  };
  token("bos_token", out.has_bos_token, out.bos_token);
  token("eos_token", out.has_eos_token, out.eos_token);
  flag("add_bos_token", out.add_bos_token);
  flag("add_eos_token", out.add_eos_token);
  return out;
}

}  // namespace detail

namespace {

std::unique_ptr<Tokenizer> load_file(const fs::path& file) {
  std::error_code ec;
  std::string config;
  fs::path config_path = file.parent_path() / "tokenizer_config.json";
  if (file.filename() != "tokenizer_config.json" && fs::is_regular_file(config_path, ec))
    config = read_file(config_path.string(), "tokenizer file");
  // Report a broken config under its own name rather than the tokenizer's.
  detail::parse_tokenizer_config(config, config_path.string());

  if (file.extension() == ".json")
    return parse_hf_tokenizer(read_file(file.string(), "tokenizer file"), config, file.string());
  return load_sentencepiece_tokenizer(file.string(), config);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) {
    if (fs::is_regular_file(file / "tokenizer.json", ec)) {
      // Llama 2 / Mistral directories also ship a tokenizer.json whose
      // pipeline (Metaspace, byte fallback decoders) is not supported here;
      // their tokenizer.model is the reference, so use it instead.
      if (fs::is_regular_file(file / "tokenizer.model", ec)) {
        try {
          return load_file(file / "tokenizer.json");
        } catch (const UsageError& e) {
          log(LogLevel::warn, "{}; using tokenizer.model instead", e.what());
          return load_file(file / "tokenizer.model");
        }
      }
      file /= "tokenizer.json";
    } else if (fs::is_regular_file(file / "tokenizer.model", ec)) {
      file /= "tokenizer.model";
    } else {
      throw UsageError(
          fmt::format("no tokenizer.json or tokenizer.model in the directory '{}'", path));
    }
  } else if (!fs::exists(file, ec)) {
    throw UsageError(fmt::format("tokenizer file '{}' does not exist", path));
  } else if (!fs::is_regular_file(file, ec)) {
    throw UsageError(fmt::format("tokenizer path '{}' is neither a file nor a directory", path));
  }
  return load_file(file);
}

}  // namespace qforge::host
