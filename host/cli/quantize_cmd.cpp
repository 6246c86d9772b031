// `qforge quantize`: the block-sequential pipeline from the command line or a
// JSON recipe, then the perplexity of the original, dequantized and packed
// models when an evaluation text is given.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "commands.hpp"
#include "signals.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/save/peft.hpp"
#include "qforge_host/train/postprocess.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/eval/eval.hpp"
#include "qforge_host/eval/ppl_cache.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/schemes.hpp"
#include "qforge_host/results/apply.hpp"
#include "qforge_host/base/progress.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::cli {
namespace {

std::vector<std::string> list(const po::variables_map& vm, const char* key) {
  return vm.count(key) ? vm[key].as<std::vector<std::string>>() : std::vector<std::string>{};
}

// The JSON type a recipe value for option `o` must have.
enum class JsonKind { flag, number, string, list };
JsonKind kind_of(const po::option_description& o) {
  const auto* sem = o.semantic().get();
  if (sem->max_tokens() == 0) return JsonKind::flag;
  if (dynamic_cast<const po::typed_value<std::vector<std::string>>*>(sem)) return JsonKind::list;
  if (dynamic_cast<const po::typed_value<std::string>*>(sem)) return JsonKind::string;
  return JsonKind::number;
}

// A recipe is JSON whose keys are the long option names of this command
// (e.g. {"model": ..., "method": ..., "set": {"bits": 4}, "override":
// ["*down_proj:bits=8"], "qep": true, "eval": ...}), each value of the
// option's type. The command line wins over the recipe: an option given on
// both is taken from the command line, a --set name replaces the recipe's,
// and command-line --override patterns come after the recipe's (later wins).
void apply_recipe(const std::string& path, const po::options_description& opts,
                  po::variables_map& vm, std::vector<PostprocessStep>& pre_steps,
                  std::vector<PostprocessStep>& steps) {
  json r = json::parse(host::read_file(path, "recipe"), nullptr, false);
  if (r.is_discarded() || !r.is_object())
    throw host::UsageError(fmt::format("{}: a recipe must be a JSON object", path));
  auto bad = [&](const std::string& key, const char* want) {
    return host::UsageError(fmt::format("{}: \"{}\" must be {}", path, key, want));
  };
  std::set<std::string> cli_sets;
  for (const auto& s : list(vm, "set")) cli_sets.insert(host::split_assignment(s).first);
  const std::vector<std::string> cli_overrides = list(vm, "override");
  vm.erase("override");
  std::vector<std::string> args;
  for (const auto& [key, value] : r.items()) {
    if (key == "recipe") throw host::UsageError(fmt::format("{}: a recipe cannot include another", path));
    if (key == "postprocess" || key == "preprocess") {  // [{"id": ..., "set": {...}}, ...]
      if (!value.is_array()) throw bad(key, "an array of {\"id\": ..., \"set\": {...}}");
      for (const auto& step : value) {
        if (!step.is_object() || !step.contains("id") || !step["id"].is_string())
          throw bad(key, "an array of {\"id\": ..., \"set\": {...}}");
        std::vector<std::string> sets;
        for (const auto& [k, v] : step.items()) {
          if (k == "id") continue;
          if (k != "set" || !v.is_object()) throw bad(key + "[].set", "an object of parameter values");
          for (const auto& [name, x] : v.items()) {
            if (!x.is_primitive() || x.is_null()) throw bad(key + "[].set." + name, "a string, number or boolean");
            sets.push_back(name + "=" + (x.is_string() ? x.get<std::string>() : x.dump()));
          }
        }
        (key == "preprocess" ? pre_steps : steps)
            .push_back({step["id"].get<std::string>(), parse_sets(sets)});
      }
      continue;
    }
    const po::option_description* o = opts.find_nothrow(key, false);
    if (o == nullptr)
      throw host::UsageError(fmt::format("{}: unknown recipe key '{}' (keys are this command's long options)", path, key));
    auto scalar = [&](const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); };
    if (key == "set") {
      if (!value.is_object()) throw bad(key, "an object of parameter values");
      for (const auto& [k, v] : value.items()) {
        if (!v.is_primitive() || v.is_null()) throw bad("set." + k, "a string, number or boolean");
        if (!cli_sets.count(k)) args.push_back("--set=" + k + "=" + scalar(v));
      }
      continue;
    }
    if (vm.count(key) && !vm[key].defaulted() && key != "override") continue;  // the command line wins
    switch (kind_of(*o)) {
      case JsonKind::flag:
        if (!value.is_boolean()) throw bad(key, "true or false");
        if (value.get<bool>()) args.push_back("--" + key);
        break;
      case JsonKind::number:
        if (!value.is_number()) throw bad(key, "a number");
        args.push_back("--" + key + "=" + value.dump());
        break;
      case JsonKind::string:
        if (!value.is_string()) throw bad(key, "a string");
        args.push_back("--" + key + "=" + value.get<std::string>());
        break;
      case JsonKind::list:
        if (!value.is_array()) throw bad(key, "an array of strings");
        for (const auto& v : value) {
          if (!v.is_string()) throw bad(key, "an array of strings");
          args.push_back("--" + key + "=" + v.get<std::string>());
        }
        break;
    }
  }
  for (const auto& text : cli_overrides) args.push_back("--override=" + text);
  po::store(po::command_line_parser(args).options(opts).run(), vm);
}

// Whether any linear of `m` runs through an inference layer.
bool runs_packed(host::Model& m) {
  for (auto& b : m.blocks())
    for (const host::Linear* l : b.linears())
      if (l->packed) return true;
  return false;
}

std::string describe_sets(const std::map<std::string, std::string>& sets) {
  std::string out;
  for (const auto& [k, v] : sets) out += (out.empty() ? "" : " ") + k + "=" + v;
  return out.empty() ? "its defaults" : out;
}

double perplexity_of(const host::Model& m, const std::vector<int32_t>& stream, int64_t seqlen,
                     const std::string& label) {
  host::ProgressLine p("perplexity " + label, "windows");
  return host::perplexity(m, stream, seqlen, 8, [&](int64_t d, int64_t t) { p.update(d, t); }).ppl;
}

}  // namespace

int quantize_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge quantize --model DIR --method ID [--set k=v ...] [--calib FILE] --out DIR [options]\n"
      "       qforge quantize --model DIR --scheme W8A8 [--preprocess ID [--pre-set k=v ...]] --calib FILE --out DIR\n"
      "       qforge quantize --recipe FILE.json [options]\n"
      "       qforge quantize --model DIR --from-results FILE --out DIR\n\n"
      "Quantizes every selected linear layer block by block through the quantizer plugin,\n"
      "writes the dequantized model to --out (with quant_results.safetensors holding the\n"
      "packed layers and per-layer errors), checkpointing each finished block: after an\n"
      "interruption (or Ctrl-C, which stops after the current layer, or at once when\nthe plugin has not returned 10 s later) rerun with --resume.\n\nOptions");
  opts.add_options()
      ("help,h", "show this help")
      ("recipe", po::value<std::string>(), "JSON file whose keys are these long options")
      ("model", po::value<std::string>(), "Hugging Face model directory")
      ("method", po::value<std::string>(), "quantizer component id (see `qforge plugins`)")
      ("scheme", po::value<std::string>(), "a named scheme as llm-compressor users know them "
       "(W4A16, W4A16_ASYM, W8A16, W8A8, FP8, FP8_DYNAMIC; `qforge plugins show ID` lists each "
       "quantizer's): the --method's parameters for it (--set still wins), or the quantizer "
       "that implements it by default; saves compressed-tensors unless --save-format is given")
      ("preprocess", po::value<std::vector<std::string>>()->composing(),
       "pre-process component id (e.g. org.qforge.smoothquant, org.qforge.awq), run on each "
       "block before it is quantized, in the order given (repeatable)")
      ("pre-set", po::value<std::vector<std::string>>()->composing(),
       "parameter name=value of the --preprocess before it (repeatable); a parameter the "
       "method also has (e.g. AWQ's bits, group_size, sym) defaults to the method's value")
      ("set", po::value<std::vector<std::string>>()->composing(), "method parameter name=value (repeatable)")
      ("override", po::value<std::vector<std::string>>()->composing(),
       "per-layer parameters PATTERN:name=value[,name=value] (glob or substring; repeatable, later wins)")
      ("calib", po::value<std::string>(), "calibration file: .txt, .jsonl, .csv or token ids "
       ".u16/.u32/.i64 (optional for calibration-free methods, e.g. RTN)")
      ("calib-format", po::value<std::string>()->default_value("auto"), "auto, text, jsonl, csv, ids-u16, ids-u32, ids-i64")
      ("text-field", po::value<std::string>()->default_value("text"), "JSONL key / CSV column holding the text")
      ("nsamples", po::value<int64_t>()->default_value(128), "calibration sequences")
      ("seqlen", po::value<int64_t>()->default_value(2048), "tokens per calibration sequence")
      ("seed", po::value<uint64_t>()->default_value(0), "calibration sampling seed")
      ("strategy", po::value<std::string>()->default_value("random"),
       "random (GPTQ windows), concat-chunk, drop-head, drop-rand (OneComp) or per-document")
      ("include-names", po::value<std::vector<std::string>>()->composing(), "only these layers (exact names)")
      ("include-keywords", po::value<std::vector<std::string>>()->composing(), "only layers whose name contains one")
      ("exclude-names", po::value<std::vector<std::string>>()->composing(), "drop these layers (default: lm_head)")
      ("exclude-keywords", po::value<std::vector<std::string>>()->composing(), "drop layers whose name contains one")
      ("num-layers", po::value<int64_t>()->default_value(-1), "keep only the first N selected layers")
      ("qep", "quantization error propagation (Arai & Ichikawa, NeurIPS 2025)")
      ("percdamp", po::value<double>()->default_value(0.01), "QEP dampening, fraction of mean(diag H)")
      ("perccorr", po::value<double>()->default_value(0.5), "QEP correction strength in [0, 1]")
      ("out", po::value<std::string>(), "output directory (the model in --save-format + quant_results.safetensors)")
      ("save-format", po::value<std::string>()->default_value("dequantized"),
       "dequantized: float16 safetensors with the dequantized weights; gptq: AutoGPTQ v1 packed "
       "checkpoint (quantization_config, quantize_config.json) for transformers/vLLM, needs a "
       "method writing org.qforge.gptq/1 and every block linear quantized with one setting; "
       "compressed-tensors: llm-compressor's format, loaded by vLLM and transformers: "
       "pack-quantized for any affine grid result, int-quantized / float-quantized for W8A8 "
       "and FP8 (org.qforge.w8a8, org.qforge.fp8), per-layer settings allowed (the default "
       "with --scheme); qforge: any "
       "packed format (a third-party plugin's too; not W8A8/FP8, whose tensor 'weight' would "
       "read as a dense weight) stored bit for bit with its format id and "
       "metadata, read back only by qforge through that format's inference layer; dbf: OneComp's "
       "DBF layout (scaling0/2/4, bp1/bp3) for org.qforge.dbf; quip: the qforge layout under "
       "quant_method \"quip\" for org.qforge.quip (codes, grid, rescaling, transforms), read "
       "back only by qforge")
      ("resume", "continue an interrupted run in --out from its checkpoint")
      ("force", "delete model files in --out that this run would not write (a stale "
                "model.safetensors, *.bin, an index) instead of refusing")
      ("from-results", po::value<std::string>(), "re-apply a quant_results.safetensors without quantizing")
      ("chunk", po::value<int64_t>()->default_value(4), "calibration sequences per forward pass")
      ("act-dtype", po::value<std::string>()->default_value("float32"), "calibration activations stored as float32, bfloat16 or float16")
      ("eval", po::value<std::string>(), "text file: print the perplexity of the original model "
       "(kept between runs, keyed by content), of the written checkpoint read back, and of the "
       "packed model in memory when the checkpoint is not run packed")
      ("eval-seqlen", po::value<int64_t>(), "perplexity window (default: min(2048, max_position_embeddings))")
      ("json", "print a JSON summary");
  add_postprocess_options(opts);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  // Pre- and post-processes: the command line's, else the recipe's
  // ("preprocess", "postprocess").
  std::vector<PostprocessStep> recipe_pre, recipe_steps, steps = postprocess_steps(args);
  std::vector<PostprocessStep> pre_steps = component_steps(args, "--preprocess", "--pre-set");
  if (vm.count("recipe"))
    apply_recipe(vm["recipe"].as<std::string>(), opts, vm, recipe_pre, recipe_steps);
  if (steps.empty()) steps = recipe_steps;
  if (pre_steps.empty()) pre_steps = recipe_pre;
  po::notify(vm);
  if (!vm.count("model")) throw host::UsageError("--model DIR is required");
  if (!vm.count("out")) throw host::UsageError("--out DIR is required");
  std::string model_dir = vm["model"].as<std::string>(), out = vm["out"].as<std::string>();
  // Cheap checks first: a run can take hours.
  {
    std::error_code ec;
    if (fs::exists(out, ec) && fs::exists(model_dir, ec) && fs::equivalent(out, model_dir, ec))
      throw host::UsageError(fmt::format("--out {} is the model directory; choose another", out));
    if (vm.count("eval")) {
      const std::string e = vm["eval"].as<std::string>();
      if (!fs::is_regular_file(e, ec) || fs::file_size(e, ec) == 0)
        throw host::UsageError(fmt::format("--eval {}: not a readable, non-empty text file", e));
    }
  }
  const int64_t positions = host::load_config(model_dir).max_position_embeddings;
  // The evaluation text and window, checked now rather than after the run.
  std::vector<int32_t> eval_stream;
  int64_t eval_seqlen = 0;
  if (vm.count("eval")) {
    eval_seqlen = vm.count("eval-seqlen") ? vm["eval-seqlen"].as<int64_t>()
                                          : std::min<int64_t>(2048, positions);
    if (eval_seqlen < 2 || eval_seqlen > positions)
      throw host::UsageError(fmt::format("--eval-seqlen must be in [2, {}] "
                                         "(max_position_embeddings)", positions));
    auto tok = host::load_tokenizer(model_dir);
    eval_stream = host::perplexity_stream(
        *tok, host::read_file(vm["eval"].as<std::string>(), "text file"), "");
    if (static_cast<int64_t>(eval_stream.size()) < eval_seqlen)
      throw host::UsageError(fmt::format("--eval {}: {} tokens, less than one window of {}",
                                         vm["eval"].as<std::string>(), eval_stream.size(),
                                         eval_seqlen));
  }
  if (!vm.count("from-results") && host::declares_quantization(model_dir))
    throw host::UsageError(fmt::format(
        "{} is already quantized (its config.json has a quantization_config); quantize the "
        "unquantized model (eval and generate read quantized checkpoints)", model_dir));
  // A scheme is stored the way llm-compressor stores it, unless told otherwise.
  const std::string save_format = vm.count("scheme") && vm["save-format"].defaulted()
                                      ? "compressed-tensors"
                                      : vm["save-format"].as<std::string>();
  host::WriterOptions wo;
  wo.resume = vm.count("resume") > 0;
  wo.force = vm.count("force") > 0;
  wo.holder = fmt::format("qforge quantize --model {}", model_dir);
  host::CheckpointWriter writer(host::make_save_format(save_format), model_dir, out, wo);
  load_plugins(registry);
  // Post-processes are checked now, not after a long quantization. Those
  // with a per-block hook run inside the pipeline, the others at the end.
  check_postprocess_steps(registry, steps);
  std::vector<host::ComponentRun> block_steps;
  std::vector<PostprocessStep> model_steps;
  for (const auto& step : steps) {
    if (host::has_run_block(*registry.find(step.id)))
      block_steps.push_back({step.id, step.set});
    else
      model_steps.push_back(step);
  }
  steps = model_steps;  // run on the saved checkpoint, after the per-block ones
  if (!steps.empty() && !vm.count("train-data") && !vm.count("calib"))
    throw host::UsageError("post-processes train on --train-data FILE (or the --calib file)");

  json summary = {{"model", model_dir}, {"out", out}};
  bool wrote_adapter = false;  // by a per-block post-process
  if (vm.count("from-results")) {
    if (vm.count("scheme") || vm.count("method") || !pre_steps.empty())
      throw host::UsageError("--from-results re-applies saved results (their pre-processes "
                             "included): --method, --scheme and --preprocess do not apply");
    host::apply_results(registry, model_dir, vm["from-results"].as<std::string>(), writer);
    summary["from_results"] = vm["from-results"].as<std::string>();
    if (!vm.count("json")) fmt::print("wrote {} from {}\n", out, vm["from-results"].as<std::string>());
  } else {
    host::QuantizeOptions o;
    o.model_dir = model_dir;
    o.out_dir = out;
    if (vm.count("scheme")) {
      const std::string method = vm.count("method") ? vm["method"].as<std::string>() : "";
      o.method = host::find_scheme(registry, vm["scheme"].as<std::string>(), method, &o.params)
                     .desc->id;
      host::log(host::LogLevel::info, "--scheme {}: {} with {}", vm["scheme"].as<std::string>(),
                o.method, describe_sets(o.params));
    } else if (vm.count("method")) {
      o.method = vm["method"].as<std::string>();
    } else {
      throw host::UsageError("--method ID (or --scheme NAME) is required");
    }
    for (const auto& [k, v] : parse_sets(list(vm, "set"))) o.params[k] = v;
    for (const auto& step : pre_steps) o.preprocesses.push_back({step.id, step.set});
    for (const auto& text : list(vm, "override")) o.overrides.push_back(host::parse_override(text));
    if (vm.count("calib")) o.calibration.file = vm["calib"].as<std::string>();
    o.calibration.format = vm["calib-format"].as<std::string>();
    o.calibration.text_field = vm["text-field"].as<std::string>();
    o.calibration.nsamples = vm["nsamples"].as<int64_t>();
    o.calibration.seqlen = vm["seqlen"].as<int64_t>();
    // The default window is 2048 tokens: cut to the model's positions, and say so
    // (an explicit --seqlen beyond them is refused by the pipeline).
    if (vm["seqlen"].defaulted() && positions > 0 && o.calibration.seqlen > positions) {
      o.calibration.seqlen = positions;
      host::log(host::LogLevel::info, "--seqlen {} (the model's max_position_embeddings)",
                positions);
    }
    o.calibration.seed = vm["seed"].as<uint64_t>();
    o.calibration.strategy = vm["strategy"].as<std::string>();
    o.selection.include_names = list(vm, "include-names");
    o.selection.include_keywords = list(vm, "include-keywords");
    if (vm.count("exclude-names")) o.selection.exclude_names = list(vm, "exclude-names");
    o.selection.exclude_keywords = list(vm, "exclude-keywords");
    o.selection.num_layers = vm["num-layers"].as<int64_t>();
    o.qep = vm.count("qep") > 0;
    o.qep_percdamp = vm["percdamp"].as<double>();
    o.qep_perccorr = vm["perccorr"].as<double>();
    if (o.qep_percdamp < 0 || !(o.qep_perccorr >= 0 && o.qep_perccorr <= 1))
      throw host::UsageError("--percdamp must be >= 0 and --perccorr in [0, 1]");
    o.resume = vm.count("resume") > 0;
    o.chunk = vm["chunk"].as<int64_t>();
    o.act_dtype = parse_dtype(vm["act-dtype"].as<std::string>(), "--act-dtype");
    o.block_postprocesses = block_steps;
    host::QuantizeSummary s;
    try {
      InterruptScope interruptible;
      s = host::quantize_model(registry, o, writer);
    } catch (const host::Cancelled&) {
      fmt::print(stderr, "qforge: stopped; the finished blocks are checkpointed in {} — rerun "
                 "with --resume to continue\n", out);
      return host::kExitCancelled;
    }
    if (!s.adapters.empty()) {
      host::write_peft_adapter((fs::path(out) / "adapter").string(), s.adapters, model_dir);
      wrote_adapter = true;
    }
    json layers = json::array();
    for (const auto& l : s.layers) layers.push_back({{"name", l.name}, {"format", l.format}, {"metrics", l.metrics}});
    summary["calibration"] = s.calibration;
    summary["results"] = s.results_file;
    summary["resumed_from_block"] = s.resumed_from_block;
    summary["layers"] = layers;
    if (!vm.count("json")) {
      fmt::print("calibration: {}\n", s.calibration);
      fmt::print("{:<40} {:>12} {:>12} {:>9}\n", "layer", "rel.out.err", "rel.w.err", "seconds");
      auto figure = [](const host::LayerReport& l, const char* key) {
        return l.metrics.count(key) ? fmt::format("{:.4e}", l.metrics.at(key)) : "-";
      };
      for (const auto& l : s.layers)
        fmt::print("{:<40} {:>12} {:>12} {:>9.3f}\n", l.name,
                   figure(l, "relative_output_error"), figure(l, "relative_weight_error"),
                   l.metrics.count("seconds") ? l.metrics.at("seconds") : 0.0);
      fmt::print("wrote {} ({} checkpoint) and {}\n", out, save_format,
                 s.results_file);
    }
  }

  if (!steps.empty()) {
    if (wrote_adapter)
      throw host::UsageError(fmt::format(
          "the per-block post-processes wrote an adapter ({}/adapter); {} would train without it: "
          "model-wide post-processes cannot start from an adapter", out, steps[0].id));
    PostprocessPlan plan;
    plan.model_dir = out;
    plan.out_dir = out;
    plan.steps = steps;
    fill_training_options(vm, plan);
    if (plan.teacher_dir.empty()) plan.teacher_dir = model_dir;
    if (plan.data.file.empty() && vm.count("calib")) {
      plan.data.file = vm["calib"].as<std::string>();
      plan.data.format = vm["calib-format"].as<std::string>();
      plan.data.text_field = vm["text-field"].as<std::string>();
    }
    plan.lock = false;  // the writer holds --out's lock
    try {
      InterruptScope interruptible;
      summary["postprocess"] = run_postprocess_plan(registry, plan);
    } catch (const host::Cancelled&) {
      fmt::print(stderr, "qforge: stopped; the quantized model is in {} and its training is "
                 "checkpointed — continue with `qforge postprocess --model {} --out {} --resume` "
                 "and the same --postprocess options\n", out, out, out);
      return host::kExitCancelled;
    }
    if (!vm.count("json"))
      fmt::print("post-processes done{}\n", fs::exists(fs::path(out) / "adapter")
                                                 ? fmt::format("; adapter in {}/adapter", out)
                                                 : fmt::format("; {} updated", out));
  }

  if (vm.count("eval")) {
    const std::string file = vm["eval"].as<std::string>();
    const auto& stream = eval_stream;
    const int64_t seqlen = eval_seqlen;
    json ppl;
    // The original model's figure is kept between runs (eval/ppl_cache.hpp).
    const std::string key = host::perplexity_key(model_dir, file, seqlen);
    const std::optional<double> known = host::cached_perplexity(key);
    host::Model original = host::Model::load(model_dir, at::kFloat);
    ppl["original"] = known ? *known : perplexity_of(original, stream, seqlen, "original");
    if (!known) host::remember_perplexity(key, ppl["original"].get<double>());
    // The checkpoint as written to --out, read back.
    const std::string saved_as = save_format;
    host::Model written = host::load_model(registry, out, at::kFloat);
    ppl[saved_as] = perplexity_of(written, stream, seqlen, saved_as);
    // With the adapter the post-processes wrote beside it, read back too.
    const fs::path adapter = fs::path(out) / "adapter";
    const bool adapted = (!steps.empty() || wrote_adapter) && fs::exists(adapter / "adapter_config.json");
    if (adapted) {
      host::apply_peft_adapter(written, adapter.string());
      ppl[saved_as + "+adapter"] = perplexity_of(written, stream, seqlen, saved_as + "+adapter");
    }
    // The packed model in memory (the written checkpoint, whose other
    // parameters are the run's — a pre-process may have changed norms — with
    // each quantized layer run by its inference layer), when the written
    // checkpoint is not itself run packed: then it is the only packed figure.
    const bool written_packed = runs_packed(written);
    bool packed = false;
    if (!written_packed) {
      std::string results = (fs::path(out) / "quant_results.safetensors").string();
      if (vm.count("from-results")) results = vm["from-results"].as<std::string>();
      host::Model base = host::load_model(registry, out, at::kFloat);
      packed = host::attach_packed_layers(registry, base, host::load_results(results));
      if (packed) ppl["packed"] = perplexity_of(base, stream, seqlen, "packed");
    }
    summary["perplexity"] = ppl;
    summary["perplexity_protocol"] = fmt::format(
        "{}: whole file, one BOS, non-overlapping windows of {} tokens, {} tokens", file, seqlen,
        stream.size());
    if (!vm.count("json")) {
      fmt::print("perplexity ({}):\n", summary["perplexity_protocol"].get<std::string>());
      fmt::print("  original           {:.4f}{}\n", ppl["original"].get<double>(),
                 known ? "  (measured before for this model and text)" : "");
      fmt::print("  {:<18} {:.4f}  (the written checkpoint{})\n", saved_as,
                 ppl[saved_as].get<double>(), written_packed ? ", run packed" : "");
      if (adapted)
        fmt::print("  {:<18} {:.4f}  (the written checkpoint with its adapter, {})\n",
                   saved_as + "+adapter", ppl[saved_as + "+adapter"].get<double>(), adapter.string());
      if (packed) fmt::print("  packed             {:.4f}\n", ppl["packed"].get<double>());
      else if (!written_packed) fmt::print("  packed             (no inference layer for every format)\n");
    }
  }
  if (vm.count("json")) std::cout << summary.dump(2) << "\n";
  return host::kExitOk;
}

}  // namespace qforge::cli
