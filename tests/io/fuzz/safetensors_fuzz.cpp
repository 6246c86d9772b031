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
#include "../../support/fuzz_replay.hpp"

int main(int argc, char** argv) {
  return qforge::test::replay_fuzz_inputs(argc, argv, [](const auto& f, const std::string& bytes) {
    // Seeds named valid_* must stay valid, or the fuzzer starts from nothing.
    if (f.filename().string().rfind("valid_", 0) != 0) return true;
    try {
      qforge::host::parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()),
                                             bytes.size(), f.string());
    } catch (const std::exception& e) {
      std::fprintf(stderr, "seed %s is refused: %s\n", f.c_str(), e.what());
      return false;
    }
    return true;
  });
}
#endif
