#include "qforge_host/pipeline/resume.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/digest.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/plugins/services.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {

namespace {

json inputs_identity(const QuantizeOptions& o, const std::string& plugin_library) {
  const json model = model_files_identity(o.model_dir);
  const std::string& calib = o.calibration.file;
  std::error_code ec;
  json calibration = !fs::is_regular_file(calib, ec) ? json(nullptr)  // the loader says why
                     : fs::file_size(calib) <= (uint64_t{256} << 20) ? json(file_digest(calib))
                                                                     : json(file_identity(calib));
  return {{"model", model},
          {"calibration", calibration},
          {"plugin", plugin_library.empty() ? json(nullptr) : json(file_digest(plugin_library))}};
}

}  // namespace

namespace {
json runs_identity(const std::vector<ComponentRun>& runs) {
  json out = json::array();
  for (const auto& r : runs) out.push_back({r.id, r.params});
  return out;
}
}  // namespace

std::string options_fingerprint(const QuantizeOptions& o, const std::string& save_format,
                                const std::string& plugin_library) {
  json overrides = json::array();
  for (const auto& ov : o.overrides) overrides.push_back({ov.pattern, ov.params});
  const auto& c = o.calibration;
  const auto& s = o.selection;
  return json{{"model", fs::weakly_canonical(o.model_dir).string()},
              {"method", o.method},
              {"params", o.params},
              {"overrides", overrides},
              {"selection", {s.target_types, s.include_names, s.include_keywords, s.exclude_names,
                             s.exclude_keywords, s.num_layers}},
              {"calibration", {c.file, c.format, c.text_field, c.nsamples, c.seqlen, c.seed, c.strategy}},
              {"qep", {o.qep, o.qep_percdamp, o.qep_perccorr}},
              {"act_dtype", std::string(at::toString(o.act_dtype))},
              {"save_format", save_format},
              {"preprocesses", runs_identity(o.preprocesses)},
              {"block_postprocesses", runs_identity(o.block_postprocesses)},
              {"inputs", inputs_identity(o, plugin_library)}}
      .dump();
}

RunCheckpoint::RunCheckpoint(const fs::path& out_dir) : dir_(out_dir / ".qforge-checkpoint") {}

bool RunCheckpoint::exists() const { return fs::exists(dir_ / "state.json"); }

ResumeState RunCheckpoint::load(const std::string& fingerprint, at::ScalarType act_dtype) const {
  json state = json::parse(read_file((dir_ / "state.json").string(), "checkpoint state"), nullptr,
                           false);
  if (!state.is_object())
    throw UsageError(fmt::format("{}: malformed checkpoint state (not a JSON object); rerun "
                                 "without --resume", (dir_ / "state.json").string()));
  if (state.value("fingerprint", "") != fingerprint)
    throw UsageError(fmt::format(
        "{}: the checkpoint was made with different options; rerun without --resume "
        "(or with the same options)", dir_.string()));
  ResumeState r;
  try {
    r.next_block = state.at("next_block").get<int64_t>();
    r.calibration = state.at("calibration").get<std::string>();
    r.files = state.at("files").get<std::map<std::string, std::string>>();
  } catch (const json::exception& e) {
    throw UsageError(fmt::format("{}: malformed checkpoint state ({}); rerun without --resume",
                                 dir_.string(), e.what()));
  }
  if (r.next_block < 1)
    throw UsageError(fmt::format("{}: malformed checkpoint state (next_block {}); rerun without "
                                 "--resume", dir_.string(), r.next_block));
  for (const auto& [path, digest] : r.files)
    if (!fs::exists(path) || file_digest(path) != digest)
      throw UsageError(fmt::format("{} changed since the checkpoint was written; rerun without "
                                   "--resume", path));
  const std::string activations = (dir_ / "activations.safetensors").string();
  if (!r.files.count(activations)) return r;  // a calibration-free run carries none
  SafetensorsFile acts(activations);
  r.x = acts.load("x", act_dtype);
  if (acts.contains("x_fp")) r.x_fp = acts.load("x_fp", act_dtype);
  return r;
}

std::string RunCheckpoint::results_path(int64_t block) const {
  return (dir_ / fmt::format("results-block-{:05}.safetensors", block)).string();
}

std::string RunCheckpoint::adapters_path(int64_t block) const {
  return (dir_ / fmt::format("adapters-block-{:05}.safetensors", block)).string();
}

void RunCheckpoint::save(ResumeState& s, const std::string& fingerprint,
                         const std::vector<std::string>& written) const {
  if (s.x.defined()) {
    std::vector<std::pair<std::string, at::Tensor>> acts = {{"x", s.x}};
    if (s.x_fp.defined()) acts.emplace_back("x_fp", s.x_fp);
    const std::string activations = (dir_ / "activations.safetensors").string();
    save_safetensors(activations, acts);
    s.files[activations] = file_digest(activations);
  }
  for (const auto& path : written) s.files[path] = file_digest(path);
  write_text_atomic((dir_ / "state.json").string(),
                    json{{"fingerprint", fingerprint},
                         {"next_block", s.next_block},
                         {"calibration", s.calibration},
                         {"files", s.files}}
                        .dump());
}

std::string RunCheckpoint::last_activity() const {
  std::error_code ec;
  if (!fs::is_regular_file(activity_path(), ec)) return {};
  return strip(read_file(activity_path().string(), "checkpoint activity record"));
}

ActivityRecord::ActivityRecord(const fs::path& file) {
  fd_ = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd_ < 0) log(LogLevel::debug, "{}: cannot record plugin calls", file.string());
  record_plugin_activity_in(fd_);
}

ActivityRecord::~ActivityRecord() {
  record_plugin_activity_in(-1);
  if (fd_ >= 0) ::close(fd_);
}

void RunCheckpoint::remove() const {
  // The state first: a kill during the removal leaves no checkpoint that
  // claims files already deleted.
  std::error_code ec;
  fs::remove(dir_ / "state.json", ec);
  fs::remove_all(dir_);
}

}  // namespace qforge::host
