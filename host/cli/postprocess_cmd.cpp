// `qforge postprocess`: post-processes (e.g. LoRA SFT) on a saved quantized
// checkpoint, as OneComp's "direct execution on a saved quantized model";
// `qforge quantize --postprocess` runs the same plan on what it just wrote.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>
#include <optional>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "signals.hpp"
#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/digest.hpp"
#include "qforge_host/base/dir_lock.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/pipeline/results_file.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/save/peft.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/train/postprocess.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::cli {
namespace {

// Every file of a model directory but ours and hidden ones, copied into `out`
// (each under a temporary name, then renamed), the weight index last: an
// interrupted copy never looks like a complete model.
void copy_model_files(const fs::path& from, const fs::path& to) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(from))
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
  std::stable_partition(files.begin(), files.end(), [](const fs::path& p) {
    return p.filename() != "model.safetensors.index.json" && p.filename() != "config.json";
  });
  fs::create_directories(to);
  for (const fs::path& f : files) {
    const fs::path tmp = to / (f.filename().string() + fmt::format(".tmp-{}", ::getpid()));
    fs::copy_file(f, tmp, fs::copy_options::overwrite_existing);
    fs::rename(tmp, to / f.filename());
  }
}

// The post-process `id`, with its parameters validated.
const host::Component& postprocess_component(const host::Registry& registry, const std::string& id) {
  const host::Component* c = registry.find(id);
  if (c == nullptr)
    throw host::UsageError(fmt::format("no component '{}' (see `qforge plugins`)", id));
  if (c->postprocess() == nullptr)
    throw host::UsageError(fmt::format("'{}' is a {}, not a post-process", id, host::kind_name(c->desc->kind)));
  return *c;
}

// The linear layer `name` of the model.
host::Linear& find_linear(host::Model& model, const std::string& name) {
  for (auto& block : model.blocks())
    for (host::Linear* l : block.linears())
      if (l->name == name) return *l;
  throw host::UsageError(fmt::format("the model has no linear layer named '{}'", name));
}

}  // namespace

std::vector<PostprocessStep> postprocess_steps(const Args& args) {
  return component_steps(args, "--postprocess", "--pp-set");
}

std::vector<PostprocessStep> component_steps(const Args& args, const std::string& id_flag,
                                             const std::string& set_flag) {
  std::vector<PostprocessStep> steps;
  std::vector<std::vector<std::string>> sets;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const std::string& name) -> std::optional<std::string> {
      if (a == name) {
        if (i + 1 >= args.size()) throw host::UsageError(name + " needs a value");
        return args[++i];
      }
      if (a.rfind(name + "=", 0) == 0) return a.substr(name.size() + 1);
      return std::nullopt;
    };
    if (auto id = value(id_flag)) {
      steps.push_back({*id, {}});
      sets.emplace_back();
    } else if (auto kv = value(set_flag)) {
      if (steps.empty())
        throw host::UsageError(fmt::format("{} {} comes before any {}", set_flag, *kv, id_flag));
      sets.back().push_back(*kv);
    }
  }
  for (size_t i = 0; i < steps.size(); ++i) steps[i].set = parse_sets(sets[i]);
  return steps;
}

void add_postprocess_options(po::options_description& opts) {
  opts.add_options()
      ("postprocess", po::value<std::vector<std::string>>()->composing(),
       "post-process component id, run in the order given (repeatable; see `qforge plugins`)")
      ("pp-set", po::value<std::vector<std::string>>()->composing(),
       "parameter name=value of the --postprocess before it (repeatable)")
      ("teacher", po::value<std::string>(), "the unquantized model, for losses that distil from it")
      ("train-data", po::value<std::string>(), "training text: .txt, .jsonl or .csv (as --calib)")
      ("train-format", po::value<std::string>()->default_value("auto"), "auto, text, jsonl, csv, ids-u16, ids-u32, ids-i64")
      ("train-text-field", po::value<std::string>()->default_value("text"), "JSONL key / CSV column holding the text");
}

int postprocess_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge postprocess --model QUANTIZED_DIR --postprocess ID [--pp-set k=v ...]\n"
      "                          [--teacher DIR] [--train-data FILE] --out DIR [--resume] [--merge]\n"
      "       qforge postprocess --model QUANTIZED_DIR --adapter DIR --merge --out DIR\n\n"
      "Runs post-processes (e.g. org.qforge.lora.teacher-sft, org.qforge.blockwise) on a saved\n"
      "quantized checkpoint, copied to --out when it is another directory. Adapters they train\n"
      "are written as a PEFT LoRA adapter in OUT/adapter, which vLLM serves on a GPTQ or\n"
      "compressed-tensors base and `qforge eval --adapter` reads; format parameters they tune\n"
      "(scales, zero points, codes) are written back into the checkpoint's own tensors, so it\n"
      "stays in its format. With --merge, OUT holds a float16 model with everything folded in\n"
      "instead. Training is checkpointed: after an interruption (Ctrl-C stops after the\n"
      "current update) rerun with --resume.\n\nOptions");
  opts.add_options()
      ("help,h", "show this help")
      ("model", po::value<std::string>(), "quantized checkpoint (GPTQ, compressed-tensors, qforge, dbf, quip)");
  add_postprocess_options(opts);
  opts.add_options()
      ("adapter", po::value<std::string>(), "an existing PEFT adapter to fold in (with --merge)")
      ("merge", "write a float16 model with the adapters folded in")
      ("out", po::value<std::string>(), "output directory (may be --model: the adapter is added)")
      ("resume", "continue an interrupted training from its checkpoint in --out")
      ("json", "print a JSON summary");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  po::notify(vm);
  if (!vm.count("model")) throw host::UsageError("--model DIR is required");
  if (!vm.count("out")) throw host::UsageError("--out DIR is required");
  PostprocessPlan plan;
  plan.model_dir = vm["model"].as<std::string>();
  plan.out_dir = vm["out"].as<std::string>();
  plan.steps = postprocess_steps(args);
  fill_training_options(vm, plan);
  if (vm.count("adapter")) plan.adapter = vm["adapter"].as<std::string>();
  plan.merge = vm.count("merge") > 0;
  plan.resume = vm.count("resume") > 0;
  if (!host::declares_quantization(plan.model_dir) && !plan.steps.empty())
    host::log(host::LogLevel::warn, "{} is not quantized: its linears train as dense layers",
              plan.model_dir);
  json summary;
  try {
    InterruptScope interruptible;
    summary = run_postprocess_plan(registry, plan);
  } catch (const host::Cancelled&) {
    fmt::print(stderr, "qforge: stopped; training is checkpointed in {} — rerun with --resume to "
               "continue\n", plan.out_dir);
    return host::kExitCancelled;
  }
  if (vm.count("json"))
    std::cout << json({{"model", plan.model_dir}, {"out", plan.out_dir}, {"postprocess", summary}}).dump(2) << "\n";
  else
    fmt::print("wrote {}{}\n", plan.out_dir,
               plan.merge ? " (float16, adapters merged)"
               : fs::exists(fs::path(plan.out_dir) / "adapter")
                   ? " (adapter in " + (fs::path(plan.out_dir) / "adapter").string() + ")"
                   : "");
  return host::kExitOk;
}

void fill_training_options(const po::variables_map& vm, PostprocessPlan& plan) {
  if (vm.count("teacher")) plan.teacher_dir = vm["teacher"].as<std::string>();
  if (vm.count("train-data")) plan.data.file = vm["train-data"].as<std::string>();
  plan.data.format = vm["train-format"].as<std::string>();
  plan.data.text_field = vm["train-text-field"].as<std::string>();
}

std::vector<std::unique_ptr<host::ParamValues>> check_postprocess_steps(
    const host::Registry& registry, const std::vector<PostprocessStep>& steps) {
  std::vector<std::unique_ptr<host::ParamValues>> params;
  for (const auto& step : steps) {
    const host::Component& c = postprocess_component(registry, step.id);
    params.push_back(std::make_unique<host::ParamValues>(step.id, c.desc->params,
                                                         c.desc->param_count, step.set));
  }
  return params;
}

json run_postprocess_plan(host::Registry& registry, const PostprocessPlan& plan) {
  load_plugins(registry);
  // Everything that can be refused, before any work.
  const auto params = check_postprocess_steps(registry, plan.steps);
  if (!plan.adapter.empty() && !plan.steps.empty())
    throw host::UsageError("--adapter applies an existing adapter; it cannot be combined with --postprocess");
  if (plan.steps.empty() && !(plan.merge && !plan.adapter.empty()))
    throw host::UsageError("nothing to do: give --postprocess ID, or --adapter DIR with --merge");
  if (!plan.teacher_dir.empty() && !fs::is_regular_file(fs::path(plan.teacher_dir) / "config.json"))
    throw host::UsageError(fmt::format("--teacher {}: not a model directory (no config.json)", plan.teacher_dir));
  if (!plan.data.file.empty() && !fs::is_regular_file(plan.data.file))
    throw host::UsageError(fmt::format("--train-data {}: not a readable file", plan.data.file));
  std::error_code ec;
  const bool in_place = fs::exists(plan.out_dir, ec) && fs::equivalent(plan.out_dir, plan.model_dir, ec);
  if (plan.merge && in_place)
    throw host::UsageError("--merge writes a new float16 model: choose an --out other than --model");
  if (!in_place && fs::exists(fs::path(plan.out_dir) / "model.safetensors.index.json"))
    throw host::UsageError(fmt::format("{} already holds a model; choose another --out or delete it", plan.out_dir));
  const fs::path state_root = fs::path(plan.out_dir) / ".qforge-checkpoint";
  std::unique_ptr<host::DirLock> lock;
  if (plan.lock)
    lock = std::make_unique<host::DirLock>(plan.out_dir, "qforge postprocess --model " + plan.model_dir);
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const fs::path state = state_root / fmt::format("postprocess-{}", i) / "train-state.safetensors";
    if (fs::exists(state) && !plan.resume)
      throw host::UsageError(fmt::format("{} holds an unfinished post-process ({}); rerun with "
                                         "--resume to continue it, or delete it", plan.out_dir,
                                         state.string()));
  }

  host::Model model = host::load_model(registry, plan.model_dir, at::kFloat);
  if (!plan.adapter.empty()) host::apply_peft_adapter(model, plan.adapter);
  auto tok = host::load_tokenizer(plan.model_dir);
  json summary = json::array();
  std::vector<host::AdapterExport> all_adapters;
  std::map<std::string, host::QuantResult> tuned_results;
  const std::string model_identity = json(host::model_files_identity(plan.model_dir)).dump();
  for (size_t i = 0; i < plan.steps.size(); ++i) {
    const auto& step = plan.steps[i];
    const host::Component& c = postprocess_component(registry, step.id);
    host::PostprocessContext ctx;
    ctx.tokenizer = tok.get();
    ctx.teacher_dir = plan.teacher_dir;
    ctx.data = plan.data;
    ctx.state_dir = (state_root / fmt::format("postprocess-{}", i)).string();
    ctx.resume = plan.resume;
    ctx.identity = host::text_digest(json({{"id", step.id}, {"params", params[i]->text()},
                                           {"data", plan.data.file.empty() ? "" : host::file_digest(plan.data.file)},
                                           {"teacher", plan.teacher_dir}, {"model", model_identity},
                                           {"step", i}}).dump());
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<host::AdapterExport> adapters;
    std::vector<std::string> tuned;
    {
      host::ModelServices services(model, ctx);
      host::log(host::LogLevel::info, "post-process {} ({})", step.id, c.desc->name);
      host::run_postprocess(c, *params[i], services);
      if (plan.merge)
        host::merge_adapters(model);  // through each adapter's own merge
      else
        adapters = services.export_adapters();
      tuned = services.tuned_layers();
    }
    // Tuned format parameters go back into each layer's own format.
    for (const std::string& name : tuned) {
      auto* packed = dynamic_cast<host::PackedLayer*>(find_linear(model, name).packed.get());
      if (packed == nullptr || !packed->storable())
        throw host::UsageError(fmt::format("{}: its inference layer cannot write its tuned "
                                           "parameters back", name));
      tuned_results[name] = packed->store();
    }
    host::apply_adapters(model, adapters);
    all_adapters.insert(all_adapters.end(), adapters.begin(), adapters.end());
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    summary.push_back({{"id", step.id}, {"params", params[i]->text()}, {"seconds", secs},
                       {"adapters", adapters.size()}, {"tuned_layers", tuned.size()}});
    host::log(host::LogLevel::info, "post-process {}: done in {:.1f} s", step.id, secs);
  }

  // The output: a float16 model with the adapters folded in, or the
  // quantized checkpoint with a PEFT adapter beside it.
  if (plan.merge) {
    host::merge_adapters(model);
    lock.reset();  // the writer takes the directory's lock itself
    host::WriterOptions wo;
    wo.holder = "qforge postprocess --merge";
    host::CheckpointWriter writer(host::make_save_format("dequantized"), plan.model_dir,
                                  plan.out_dir, wo);
    for (size_t b = 0; b < model.blocks().size(); ++b) writer.write_block(b, model.blocks()[b], {});
    writer.finish({});
  } else {
    if (!in_place) copy_model_files(plan.model_dir, plan.out_dir);
    host::store_tuned_layers(plan.out_dir, tuned_results);
    const fs::path results = fs::path(plan.out_dir) / "quant_results.safetensors";
    if (!tuned_results.empty() && fs::exists(results))  // the quantizer's results file, tuned alike
      host::update_results(results.string(), tuned_results);
    if (!all_adapters.empty())
      host::write_peft_adapter((fs::path(plan.out_dir) / "adapter").string(), all_adapters,
                               plan.model_dir);
  }
  for (size_t i = 0; i < plan.steps.size(); ++i)
    fs::remove_all(state_root / fmt::format("postprocess-{}", i), ec);
  return summary;
}

}  // namespace qforge::cli
