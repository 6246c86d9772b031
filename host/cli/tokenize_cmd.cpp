// `qforge tokenize`: the ids of a text under a model's tokenizer.
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace qforge::cli {
namespace {

std::string read_text(const std::string& path) {
  if (path == "-") {
    return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  return host::read_file(path, "text file");
}

}  // namespace

int tokenize_command(const Args& args, host::Registry& /*registry*/) {
  po::options_description opts(
      "Usage: qforge tokenize (--model DIR | --tokenizer FILE) (--text TEXT | --file FILE)\n"
      "                       [--add-special] [--json]\n\n"
      "Prints the token ids of a text as a JSON array on one line.\n"
      "A model directory's tokenizer.json is used when present, else its tokenizer.model\n"
      "(SentencePiece); tokenizer_config.json beside the file supplies BOS/EOS.\n\nOptions");
  opts.add_options()
      ("help,h", "show this help")
      ("model", po::value<std::string>(), "model directory holding tokenizer.json or tokenizer.model")
      ("tokenizer", po::value<std::string>(),
       "tokenizer file: *.json (Hugging Face) or a SentencePiece model")
      ("text", po::value<std::string>(), "the text to encode")
      ("file", po::value<std::string>(), "encode the bytes of FILE instead ('-': standard input)")
      ("add-special",
       "add the special tokens the tokenizer adds to a sequence (BOS for Llama models), "
       "as Hugging Face's add_special_tokens")
      ("json", "print {\"ids\": [...], \"count\": N, \"pieces\": [...]} instead");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  if (vm.count("model") + vm.count("tokenizer") != 1)
    throw host::UsageError("tokenize: give exactly one of --model DIR and --tokenizer FILE");
  if (vm.count("text") + vm.count("file") != 1)
    throw host::UsageError("tokenize: give exactly one of --text TEXT and --file FILE");

  std::string path =
      vm.count("model") ? vm["model"].as<std::string>() : vm["tokenizer"].as<std::string>();
  if (path.empty()) throw host::UsageError("tokenize: empty tokenizer path");
  auto tokenizer = host::load_tokenizer(path);
  std::string text = vm.count("text") ? vm["text"].as<std::string>()
                                      : read_text(vm["file"].as<std::string>());
  std::vector<int32_t> ids = tokenizer->encode(text, vm.count("add-special") > 0);

  if (vm.count("json")) {
    json pieces = json::array();
    for (int32_t id : ids) pieces.push_back(tokenizer->piece(id));
    json out = {{"ids", ids}, {"count", ids.size()}, {"pieces", pieces}};
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  } else {
    std::cout << json(ids).dump() << "\n";
  }
  return host::kExitOk;
}

}  // namespace qforge::cli
