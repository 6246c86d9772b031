// The `qforge` subcommands. Each takes the arguments after its name and the
// loaded registry, prints its result, and returns an exit code (errors are
// thrown: UsageError -> 2, anything else -> 1).
#pragma once

#include <c10/core/ScalarType.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <nlohmann/json.hpp>

#include "qforge_host/data/calibration.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qforge::cli {

using Args = std::vector<std::string>;

int plugins_command(const Args& args, host::Registry& registry);
int quantize_layer_command(const Args& args, host::Registry& registry);
int tokenize_command(const Args& args, host::Registry& registry);
int eval_command(const Args& args, host::Registry& registry);
int generate_command(const Args& args, host::Registry& registry);
int quantize_command(const Args& args, host::Registry& registry);
int new_plugin_command(const Args& args, host::Registry& registry);
int postprocess_command(const Args& args, host::Registry& registry);

// Post-processes run on a saved quantized checkpoint (postprocess_cmd.cpp).
struct PostprocessStep {
  std::string id;                          // a post-process component
  std::map<std::string, std::string> set;  // its parameters (--pp-set)
};
struct PostprocessPlan {
  std::string model_dir;     // the quantized checkpoint
  std::string out_dir;       // may be model_dir: the adapter is added beside it
  std::string teacher_dir;   // the unquantized model ("" when none)
  host::CalibrationOptions data;  // the training file
  std::vector<PostprocessStep> steps;
  std::string adapter;       // an existing PEFT adapter to apply first (with merge)
  bool merge = false;        // write a float16 model with the adapters folded in
  bool resume = false;       // continue unfinished training from its checkpoint
  bool lock = true;          // take --out's lock (quantize already holds it)
};
// Each step's component is a post-process and its parameters are valid
// (UsageError otherwise); returns the validated values.
std::vector<std::unique_ptr<host::ParamValues>> check_postprocess_steps(
    const host::Registry& registry, const std::vector<PostprocessStep>& steps);
// Runs the plan; returns a JSON summary of each step. Throws UsageError,
// PluginError, Cancelled (the training checkpoint is kept for --resume).
nlohmann::json run_postprocess_plan(host::Registry& registry, const PostprocessPlan& plan);
// "--postprocess ID --pp-set k=v ..." in command-line order: each --pp-set
// belongs to the --postprocess before it.
std::vector<PostprocessStep> postprocess_steps(const Args& args);
// The same for any pair of flags, e.g. "--preprocess ID --pre-set k=v".
std::vector<PostprocessStep> component_steps(const Args& args, const std::string& id_flag,
                                             const std::string& set_flag);
// The options saying what to post-process with (--postprocess, --pp-set,
// --teacher, --train-data, ...), shared by quantize and postprocess, and
// their values into a plan.
void add_postprocess_options(boost::program_options::options_description& opts);
void fill_training_options(const boost::program_options::variables_map& vm, PostprocessPlan& plan);

// Loads the plugins and logs one warning per refused library.
void load_plugins(host::Registry& registry);

// "float32" | "bfloat16" | "float16"; a UsageError names `option` otherwise.
at::ScalarType parse_dtype(const std::string& s, const char* option);
// A whole file; a UsageError when it cannot be opened.

// Parses repeated `--set name=value` into a map; a repeated name is an error.
std::map<std::string, std::string> parse_sets(const std::vector<std::string>& sets);

}  // namespace qforge::cli
