// `qforge eval` and `qforge generate`: run a Hugging Face model directory.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/save/peft.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/eval/eval.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/base/progress.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace qforge::cli {
namespace {

void add_model_options(po::options_description& opts) {
  opts.add_options()
      ("model", po::value<std::string>(), "Hugging Face model directory (config.json, safetensors, tokenizer); "
       "a quantized checkpoint (AutoGPTQ v1, compressed-tensors pack-quantized, qforge) runs "
       "packed through the plugins' inference layers")
      ("dtype", po::value<std::string>()->default_value("float32"),
       "compute dtype: float32, bfloat16 or float16")
      ("adapter", po::value<std::string>(), "a PEFT LoRA adapter directory to apply (e.g. DIR/adapter "
       "written by `qforge postprocess`)");
}


po::variables_map parse(const Args& args, const po::options_description& opts) {
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  return vm;
}

std::string require_model(const po::variables_map& vm) {
  if (!vm.count("model")) throw host::UsageError("--model DIR is required");
  return vm["model"].as<std::string>();
}

// The model in DIR; a quantized checkpoint runs through the plugins'
// inference layers, so only then are the plugins loaded.
host::Model load_model(host::Registry& registry, const std::string& dir,
                       const po::variables_map& vm) {
  if (host::declares_quantization(dir)) load_plugins(registry);
  host::Model model =
      host::load_model(registry, dir, parse_dtype(vm["dtype"].as<std::string>(), "--dtype"));
  if (vm.count("adapter")) host::apply_peft_adapter(model, vm["adapter"].as<std::string>());
  return model;
}

}  // namespace

at::ScalarType parse_dtype(const std::string& s, const char* option) {
  if (s == "float32") return at::kFloat;
  if (s == "bfloat16") return at::kBFloat16;
  if (s == "float16") return at::kHalf;
  throw host::UsageError(fmt::format("{} '{}': expected float32, bfloat16 or float16", option, s));
}

int eval_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge eval --model DIR --ppl FILE [--seqlen N] [--split-on TEXT]\n"
      "       qforge eval --model DIR --choices FILE.jsonl\n\n"
      "Perplexity: the text's token stream is [BOS] + encode(whole file) (one BOS, no EOS),\n"
      "or with --split-on, [BOS] + encode(piece) for each stripped non-empty piece. It is cut\n"
      "into non-overlapping windows of --seqlen tokens (the tail is dropped); each window is\n"
      "evaluated from an empty context and every token but its first is predicted.\n"
      "Multiple choice (lm-eval style): each choice scored by the sum of its tokens'\n"
      "log-probabilities given the context; acc by the sum, acc_norm by sum / bytes.\n\nOptions");
  opts.add_options()("help,h", "show this help");
  add_model_options(opts);
  opts.add_options()
      ("ppl", po::value<std::string>(), "text file for perplexity")
      ("seqlen", po::value<int64_t>(), "window length (default: min(2048, max_position_embeddings))")
      ("split-on", po::value<std::string>()->default_value(""),
       "split the text into documents on this marker (e.g. '<|endoftext|>')")
      ("batch", po::value<int64_t>()->default_value(8), "windows per forward pass")
      ("choices", po::value<std::string>(), "JSONL file of {context, choices, label}")
      ("json", "print JSON instead of text");
  po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  std::string dir = require_model(vm);
  if (vm.count("ppl") == vm.count("choices"))
    throw host::UsageError("give exactly one of --ppl FILE or --choices FILE");
  auto t0 = std::chrono::steady_clock::now();
  host::Model model = load_model(registry, dir, vm);
  auto tok = host::load_tokenizer(dir);
  json out = {{"model", dir}, {"dtype", vm["dtype"].as<std::string>()}};
  if (vm.count("adapter")) out["adapter"] = vm["adapter"].as<std::string>();

  if (vm.count("ppl")) {
    std::string file = vm["ppl"].as<std::string>();
    int64_t seqlen = vm.count("seqlen") ? vm["seqlen"].as<int64_t>()
                                        : std::min<int64_t>(2048, model.config().max_position_embeddings);
    const int64_t positions = model.config().max_position_embeddings;
    if (positions < 2)
      throw host::ModelFileError(fmt::format(
          "{}: max_position_embeddings is {}; perplexity needs windows of at least 2 tokens", dir,
          positions));
    if (seqlen < 2 || seqlen > positions)
      throw host::UsageError(fmt::format("--seqlen must be in [2, {}] (max_position_embeddings)",
                                         positions));
    int64_t batch = vm["batch"].as<int64_t>();
    if (batch < 1) throw host::UsageError("--batch must be at least 1");
    std::string split = vm["split-on"].as<std::string>();
    auto stream = host::perplexity_stream(*tok, host::read_file(file, "text file"), split);
    host::PerplexityResult r;
    {
      host::ProgressLine progress("perplexity", "windows");
      r = host::perplexity(model, stream, seqlen, batch,
                           [&](int64_t d, int64_t t) { progress.update(d, t); });
    }
    std::string protocol = split.empty()
        ? "whole file, one BOS, no EOS; non-overlapping windows, each from an empty context"
        : fmt::format("split on '{}', each stripped non-empty piece as [BOS]+tokens; "
                      "non-overlapping windows, each from an empty context", split);
    out["perplexity"] = {{"file", file}, {"ppl", r.ppl}, {"mean_nll", r.mean_nll},
                         {"protocol", protocol}, {"tokens", r.tokens}, {"seqlen", r.seqlen},
                         {"windows", r.windows}, {"predicted_tokens", r.predicted},
                         {"dropped_tail", r.dropped_tail}};
    if (!vm.count("json")) {
      fmt::print("perplexity: {:.4f}  (mean NLL {:.6f} nats)\n", r.ppl, r.mean_nll);
      fmt::print("protocol:   {}\n", protocol);
      fmt::print("tokens:     {} in {}; {} windows of {}, {} predicted, {} dropped at the tail\n",
                 r.tokens, file, r.windows, r.seqlen, r.predicted, r.dropped_tail);
    }
  } else {
    std::string file = vm["choices"].as<std::string>();
    auto items = host::load_choices(file);
    host::ChoiceResult r;
    {
      host::ProgressLine progress("multiple choice", "items");
      r = host::multiple_choice(model, *tok, items, [&](int64_t d, int64_t t) { progress.update(d, t); });
    }
    out["choices"] = {{"file", file}, {"items", r.items}, {"acc", r.acc}, {"acc_norm", r.acc_norm},
                      {"correct", r.correct}, {"correct_norm", r.correct_norm}};
    if (!vm.count("json"))
      fmt::print("multiple choice: acc {:.4f} ({}/{}), acc_norm {:.4f} ({}/{})  [{}]\n", r.acc,
                 r.correct, r.items, r.acc_norm, r.correct_norm, r.items, file);
  }
  out["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (vm.count("json")) std::cout << out.dump(2) << "\n";
  return host::kExitOk;
}

int generate_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge generate --model DIR --prompt TEXT [--max-new-tokens N]\n\n"
      "Greedy decoding (argmax, first index on ties) with a KV cache. The prompt is\n"
      "encoded with the tokenizer's special tokens (BOS). Stops at EOS.\n\nOptions");
  opts.add_options()("help,h", "show this help");
  add_model_options(opts);
  opts.add_options()
      ("prompt", po::value<std::string>(), "prompt text")
      ("max-new-tokens", po::value<int64_t>()->default_value(128), "tokens to generate at most")
      ("json", "print JSON (ids and text) instead of text");
  po::variables_map vm = parse(args, opts);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  std::string dir = require_model(vm);
  if (!vm.count("prompt")) throw host::UsageError("--prompt TEXT is required");
  int64_t max_new = vm["max-new-tokens"].as<int64_t>();
  host::Model model = load_model(registry, dir, vm);
  if (max_new < 0) throw host::UsageError("--max-new-tokens must be >= 0");
  auto tok = host::load_tokenizer(dir);
  std::vector<int32_t> prompt = tok->encode(vm["prompt"].as<std::string>(), true);
  if (static_cast<int64_t>(prompt.size()) + max_new > model.config().max_position_embeddings)
    throw host::UsageError(fmt::format("prompt ({} tokens) + --max-new-tokens exceeds the model's {} positions",
                                       prompt.size(), model.config().max_position_embeddings));
  auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> gen = host::generate_greedy(model, prompt, max_new, tok->eos_id());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen.begin(), gen.end());
  std::string text = tok->decode(all);
  if (vm.count("json")) {
    std::cout << json({{"prompt_ids", prompt}, {"generated_ids", gen}, {"text", text},
                       {"seconds", secs}})
                     .dump(2)
              << "\n";
  } else {
    fmt::print("{}\n", text);
    host::log(host::LogLevel::info, "{} tokens in {:.3f} s ({:.1f} tokens/s)", gen.size(), secs,
              gen.empty() ? 0.0 : gen.size() / secs);
  }
  return host::kExitOk;
}

}  // namespace qforge::cli
