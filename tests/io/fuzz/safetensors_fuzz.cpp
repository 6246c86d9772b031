// libFuzzer target for the safetensors header and index parsers
// (host/src/safetensors_header.cpp; no LibTorch). The input is a whole file:
// it goes to parse_safetensors_header as a safetensors file and to
// parse_safetensors_index as an index.json text. The only exception either
// may throw is ModelFileError; anything else escapes and is reported as a
// crash. An accepted header is checked against the invariants the reader
// relies on (spans inside the data area, sizes consistent, no overlap).
//
// Built by tests/fuzz/CMakeLists.txt with clang -fsanitize=fuzzer,address,
// undefined (tools/fuzz_safetensors.sh); without libFuzzer the same file is
// linked into a replay program that runs the checked-in corpus under CTest.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "qforge_host/io/safetensors_header.hpp"

namespace {

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace qforge::host;
  // Copy into an exactly-sized heap buffer so that ASan sees any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  try {
    const SafetensorsHeader h = parse_safetensors_header(buf.data(), buf.size(), "fuzz.safetensors");
    check(h.header_bytes > 0 && h.header_bytes <= kMaxSafetensorsHeaderBytes, "header length");
    check(h.data_offset == 8 + h.header_bytes && h.data_offset + h.data_bytes == size, "data area");
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const auto& [name, t] : h.tensors) {
      check(!name.empty() && name == t.name, "name");
      check(t.begin <= t.end && t.end <= h.data_bytes, "span inside the data area");
      check(t.shape.size() <= kMaxTensorRank, "rank");
      uint64_t n = 1;
      for (int64_t d : t.shape) {
        check(d >= 0, "dimension");
        n *= static_cast<uint64_t>(d);  // cannot overflow: the parser bounds it
      }
      check(n * st_dtype_size(t.dtype) == t.end - t.begin, "size");
      check(t.file == "fuzz.safetensors", "file");
      if (t.end > t.begin) spans.emplace_back(t.begin, t.end);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t i = 1; i < spans.size(); ++i) check(spans[i - 1].second <= spans[i].first, "overlap");
  } catch (const ModelFileError& e) {
    check(std::string(e.what()).rfind("fuzz.safetensors: ", 0) == 0, "message names the file");
  }
  try {
    const auto map = parse_safetensors_index(std::string(buf.begin(), buf.end()), "index.json");
    for (const auto& [tensor, shard] : map) {
      check(!tensor.empty() && !shard.empty() && shard[0] != '/', "index entry");
      size_t start = 0;
      while (start <= shard.size()) {
        const size_t slash = std::min(shard.find('/', start), shard.size());
        check(shard.substr(start, slash - start) != "..", "no '..' component");
        start = slash + 1;
      }
    }
  } catch (const ModelFileError& e) {
    check(std::string(e.what()).rfind("index.json: ", 0) == 0, "message names the file");
  }
  return 0;
}

#ifdef QFORGE_FUZZ_REPLAY
// Without libFuzzer: run every file named on the command line (or in the
// directories named) through the target once.
#include <filesystem>
#include <fstream>
#include <iterator>

int main(int argc, char** argv) {
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
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
    LLVMFuzzerTestOneInput(p, bytes.size());
    // Seeds named valid_* must stay valid, or the fuzzer starts from nothing.
    if (f.filename().string().rfind("valid_", 0) == 0) {
      try {
        qforge::host::parse_safetensors_header(p, bytes.size(), f.string());
      } catch (const std::exception& e) {
        std::fprintf(stderr, "seed %s is refused: %s\n", f.c_str(), e.what());
        return 1;
      }
    }
  }
  std::printf("replayed %zu inputs\n", files.size());
  return 0;
}
#endif
