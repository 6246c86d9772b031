// `qforge new-plugin DIR`: a plugin project to start from — the SDK's example
// (sdk/example: a LibTorch quantizer and the inference layer of its format),
// which the tests build and run against the installed SDK.
#include <fmt/format.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/program_options.hpp>
#include <filesystem>
#include <iostream>

#include "commands.hpp"
#include "plugin_template.hpp"
#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/errors.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace qforge::cli {

int new_plugin_command(const Args& args, host::Registry& /*registry*/) {
  po::options_description opts(
      "Usage: qforge new-plugin DIR\n\n"
      "Writes a plugin project to DIR (new or empty): CMakeLists.txt and ternary.cpp, a\n"
      "complete quantizer (Hessian-weighted ternary) with the inference layer of its\n"
      "packed format, written with the SDK's C++ helpers and LibTorch. Rename its ids\n"
      "(org.example.*) and replace the algorithm with yours; then it prints how to\n"
      "build and try it.\n\nOptions");
  opts.add_options()("help,h", "show this help");
  po::options_description all;
  all.add(opts).add_options()("dir", po::value<std::string>());
  po::positional_options_description pos;
  pos.add("dir", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  if (!vm.count("dir")) throw host::UsageError("new-plugin: give the project directory (DIR)");
  const fs::path dir = vm["dir"].as<std::string>();
  std::error_code ec;
  if (fs::exists(dir, ec) && (!fs::is_directory(dir, ec) || !fs::is_empty(dir, ec)))
    throw host::UsageError(fmt::format("{} exists and is not an empty directory", dir.string()));
  fs::create_directories(dir, ec);
  if (ec) throw host::UsageError(fmt::format("{}: cannot create it: {}", dir.string(), ec.message()));
  for (const TemplateFile& f : kPluginTemplate)
    host::write_text_atomic((dir / f.name).string(), f.text);

  // Where the SDK package is: beside an installed qforge, else to be installed.
  const fs::path prefix = boost::dll::program_location().parent_path().parent_path().string();
  const bool installed = fs::exists(prefix / "lib" / "cmake" / "qforge" / "qforgeConfig.cmake", ec);
  const std::string sdk = installed ? prefix.string() : "SDK";
  fmt::print("wrote {}: CMakeLists.txt, ternary.cpp\n\n", dir.string());
  if (!installed)
    fmt::print("  cmake --install {} --component sdk --prefix SDK   # once: the SDK package\n",
               prefix.string());
  fmt::print("  cmake -S {0} -B {0}/build -DCMAKE_PREFIX_PATH={1} -DCMAKE_BUILD_TYPE=Release\n"
             "  cmake --build {0}/build\n"
             "  qforge --plugin-dir {0}/build quantize-layer --method org.example.ternary\n",
             dir.string(), sdk);
  return host::kExitOk;
}

}  // namespace qforge::cli
