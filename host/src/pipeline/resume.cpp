#include "qforge_host/pipeline/resume.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {

std::string options_fingerprint(const QuantizeOptions& o, const std::string& save_format) {
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
              {"save_format", save_format}}
      .dump();
}

RunCheckpoint::RunCheckpoint(const fs::path& out_dir) : dir_(out_dir / ".qforge-checkpoint") {}

bool RunCheckpoint::exists() const { return fs::exists(dir_ / "state.json"); }

ResumeState RunCheckpoint::load(const std::string& fingerprint, at::ScalarType act_dtype) const {
  json state = json::parse(read_file((dir_ / "state.json").string(), "checkpoint state"), nullptr,
                           false);
  if (state.is_discarded() || state.value("fingerprint", "") != fingerprint)
    throw UsageError(fmt::format(
        "{}: the checkpoint was made with different options; rerun without --resume "
        "(or with the same options)", dir_.string()));
  ResumeState r;
  r.next_block = state["next_block"].get<int64_t>();
  r.calibration = state["calibration"].get<std::string>();
  SafetensorsFile acts((dir_ / "activations.safetensors").string());
  r.x = acts.load("x", act_dtype);
  if (acts.contains("x_fp")) r.x_fp = acts.load("x_fp", act_dtype);
  return r;
}

std::string RunCheckpoint::results_path(int64_t block) const {
  return (dir_ / fmt::format("results-block-{:05}.safetensors", block)).string();
}

void RunCheckpoint::save(const ResumeState& s, const std::string& fingerprint) const {
  std::vector<std::pair<std::string, at::Tensor>> acts = {{"x", s.x}};
  if (s.x_fp.defined()) acts.emplace_back("x_fp", s.x_fp);
  save_safetensors((dir_ / "activations.safetensors").string(), acts);
  write_text_atomic((dir_ / "state.json").string(),
                    json{{"fingerprint", fingerprint},
                         {"next_block", s.next_block},
                         {"calibration", s.calibration}}
                        .dump());
}

void RunCheckpoint::remove() const { fs::remove_all(dir_); }

}  // namespace qforge::host
