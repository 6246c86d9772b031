// The replay driver of the fuzz targets (built without libFuzzer, run by
// CTest): every regular file named on the command line, or inside a
// directory named there, goes through LLVMFuzzerTestOneInput and then
// through `check(path, bytes)`, which prints why and returns false when an
// input breaks a target's own invariant. Returns the process exit status.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace qforge::test {

inline int replay_fuzz_inputs(
    int argc, char** argv,
    const std::function<bool(const std::filesystem::path&, const std::string&)>& check) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int i = 1; i < argc; ++i) {
    if (fs::is_directory(argv[i])) {
      for (const auto& e : fs::directory_iterator(argv[i]))
        if (e.is_regular_file()) files.push_back(e.path());
    } else {
      files.emplace_back(argv[i]);
    }
  }
  if (files.empty()) {
    std::fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", f.c_str());
      return 1;
    }
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    if (!check(f, bytes)) return 1;
  }
  std::printf("replayed %zu inputs\n", files.size());
  return 0;
}

}  // namespace qforge::test
