// qforge: post-training compression of large language models.
//
//   qforge [global options] <command> [command options]
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <cstdlib>
#include <unistd.h>
#include <iostream>
#include <thread>

#include "commands.hpp"
#include "signals.hpp"
#include "qforge_host/base/allocator.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/plugins/services.hpp"

namespace po = boost::program_options;
using namespace qforge;

namespace {

const char* kCommands =
    "Commands:\n"
    "  quantize         quantize a model block by block with a method plugin\n"
    "  plugins          list plugins; `plugins show ID` describes one component\n"
    "  postprocess      post-processes (e.g. LoRA SFT) on a saved quantized checkpoint\n"
    "  quantize-layer   quantize one random weight matrix with a method and check\n"
    "                   its packed inference layer (a quick check of a plugin)\n"
    "  tokenize         print the token ids of a text under a model's tokenizer\n"
    "  eval             perplexity or multiple-choice accuracy of a model\n"
    "  generate         greedy text generation with a KV cache\n"
    "  new-plugin       write a plugin project to start from (the SDK's example)\n"
    "\n"
    "Run `qforge <command> --help` for a command's options.\n"
    "Exit codes: 0 success, 2 bad usage or bad input, 1 a failure that is not the input's\n"
    "(a full disk, a plugin error, an internal error), 130 stopped by Ctrl-C.\n";

int run(int argc, char** argv) {
  po::options_description global("Global options");
  global.add_options()
      ("help,h", "show this help")
      ("version", "print the version and the plugin ABI version")
      ("plugin-dir", po::value<std::vector<std::string>>()->composing(),
       "also load plugins from DIR (repeatable; searched before QFORGE_PLUGIN_PATH and "
       "<exe dir>/../lib/qforge/plugins)")
      ("log-level", po::value<std::string>()->default_value("info"),
       "trace, debug, info, warn, error or off")
      ("threads", po::value<int>(), "compute threads (default: all hardware threads)");
  po::options_description hidden;
  hidden.add_options()
      ("command", po::value<std::string>())
      ("args", po::value<std::vector<std::string>>());
  po::options_description all;
  all.add(global).add(hidden);
  po::positional_options_description pos;
  pos.add("command", 1).add("args", -1);

  po::variables_map vm;
  auto parsed = po::command_line_parser(argc, argv)
                    .options(all)
                    .positional(pos)
                    .allow_unregistered()
                    .run();
  po::store(parsed, vm);
  po::notify(vm);

  host::set_log_level(host::parse_log_level(vm["log-level"].as<std::string>()));
  if (vm.count("version")) {
    fmt::print("qforge {} (plugin ABI {}.{}; LibTorch {}, which plugins using LibTorch must "
               "match)\n", QFORGE_VERSION, QFORGE_ABI_MAJOR, QFORGE_ABI_MINOR,
               QFORGE_TORCH_VERSION);
    return host::kExitOk;
  }
  if (!vm.count("command")) {
    if (!vm.count("help")) {
      std::cerr << "qforge: missing command\n\nUsage: qforge [global options] <command> ...\n\n"
                << kCommands;
      return host::kExitUsage;
    }
    std::cout << "Usage: qforge [global options] <command> [options]\n\n"
              << global << "\n" << kCommands;
    return host::kExitOk;
  }

  int threads = vm.count("threads") ? vm["threads"].as<int>()
                                     : static_cast<int>(std::thread::hardware_concurrency());
  if (threads < 1) throw host::UsageError("--threads must be at least 1");
  // Far more threads than cores only thrash (10000 hung every command).
  const int limit = 8 * std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  if (threads > limit)
    throw host::UsageError(fmt::format("--threads {}: at most {} (8 per hardware thread)", threads,
                                       limit));
  at::set_num_threads(threads);

  // Everything after the command goes to it, including options we didn't know.
  std::string command = vm["command"].as<std::string>();
  cli::Args rest = po::collect_unrecognized(parsed.options, po::include_positional);
  rest.erase(rest.begin());  // the command itself
  if (vm.count("help")) rest.push_back("--help");

  host::Registry registry;
  if (vm.count("plugin-dir"))
    for (const auto& d : vm["plugin-dir"].as<std::vector<std::string>>())
      registry.add_directory(d);

  cli::install_signal_reports();
  if (command == "plugins") return cli::plugins_command(rest, registry);
  if (command == "quantize-layer") return cli::quantize_layer_command(rest, registry);
  if (command == "tokenize") return cli::tokenize_command(rest, registry);
  if (command == "eval") return cli::eval_command(rest, registry);
  if (command == "quantize") return cli::quantize_command(rest, registry);
  if (command == "generate") return cli::generate_command(rest, registry);
  if (command == "new-plugin") return cli::new_plugin_command(rest, registry);
  if (command == "postprocess") return cli::postprocess_command(rest, registry);
  throw host::UsageError(fmt::format("unknown command '{}'\n\n{}", command, kCommands));
}

}  // namespace

// OpenMP's spin-waiting makes small LibTorch ops many times slower when
// another process holds a core (measured: perplexity of stories260K 24.7 s
// spinning vs 9.9 s passive on a loaded 2-core machine). libgomp reads
// OMP_WAIT_POLICY when it is loaded, before main, so when the user has not
// chosen, set PASSIVE and re-execute once.
void default_to_passive_waiting(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on spinning
}

int main(int argc, char** argv) {
  default_to_passive_waiting(argv);
  host::keep_large_allocations_in_heap();
  try {
    return run(argc, argv);
  } catch (const host::UsageError& e) {
    fmt::print(stderr, "qforge: {}\n", e.what());
    return host::kExitUsage;
  } catch (const po::error& e) {
    fmt::print(stderr, "qforge: {}\n", e.what());
    return host::kExitUsage;
  } catch (const host::Cancelled& e) {
    fmt::print(stderr, "qforge: stopped: {}\n", e.what());
    return host::kExitCancelled;
  } catch (const host::IoError& e) {
    fmt::print(stderr, "qforge: {}\n", e.what());
    return host::kExitInternal;
  } catch (const host::PluginError& e) {
    fmt::print(stderr, "qforge: {}\n", e.what());
    return e.code() == QFORGE_STATUS_INVALID_ARGUMENT || e.code() == QFORGE_STATUS_UNSUPPORTED
               ? host::kExitUsage : host::kExitInternal;
  } catch (const std::exception& e) {
    fmt::print(stderr, "qforge: internal error: {}\n", e.what());
    return host::kExitInternal;
  }
}
