// libFuzzer target for the ELF dynamic-symbol reader
// (host/src/plugins/elf_symbols.cpp; no LibTorch, no Boost). The input is a
// whole file, looked up for qforge_plugin_entry_v1 (with the prefix the
// registry uses to name a newer major's entry), then again with its section
// header offset zeroed, which sends a valid library down the PT_DYNAMIC path.
// Nothing may throw; the result is checked against the header's contract.
//
// Built by tests/plugins/elf_fuzz/CMakeLists.txt with clang
// -fsanitize=fuzzer,address,undefined (tools/fuzz_elf_symbols.sh); without
// libFuzzer the same file is linked into a replay program that runs the
// checked-in corpus and the generated seeds under CTest.
#include <elf.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "qforge_host/plugins/elf_symbols.hpp"

namespace {

const std::string kSymbol = "qforge_plugin_entry_v1";
const std::string kPrefix = "qforge_plugin_entry_v";

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

qforge::host::ElfSymbolCheck check_one(const std::vector<uint8_t>& buf) {
  using qforge::host::ElfSymbolStatus;
  const auto r = qforge::host::find_exported_function(buf.data(), buf.size(), kSymbol, kPrefix);
  switch (r.status) {
    case ElfSymbolStatus::function:
    case ElfSymbolStatus::not_found:
      check(r.reason.empty(), "no reason unless refused or not a function");
      break;
    case ElfSymbolStatus::not_function:
    case ElfSymbolStatus::invalid:
      check(!r.reason.empty(), "a reason is given");
      check(r.reason.find('\n') == std::string::npos, "the reason is one line");
      check(r.reason.size() < 400, "the reason is short");
      break;
    default:
      check(false, "status is one of the four");
  }
  if (!r.same_prefix.empty()) {
    check(r.status == ElfSymbolStatus::not_found, "same_prefix only when not found");
    check(r.same_prefix.rfind(kPrefix, 0) == 0 && r.same_prefix != kSymbol, "same_prefix");
    check(r.same_prefix.size() <= 128, "same_prefix is short");
    for (char c : r.same_prefix) check(c > 0x20 && c < 0x7f, "same_prefix is printable");
  }
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Copy into an exactly-sized heap buffer so that ASan sees any read past the end.
  std::vector<uint8_t> buf(data, data + size);
  check_one(buf);
  if (buf.size() >= sizeof(Elf64_Ehdr)) {
    std::memset(buf.data() + offsetof(Elf64_Ehdr, e_shoff), 0, sizeof(Elf64_Off));
    check_one(buf);
  }
  return 0;
}

#ifdef QFORGE_FUZZ_REPLAY
#include "../../support/fuzz_replay.hpp"

int main(int argc, char** argv) {
  using qforge::host::ElfSymbolStatus;
  return qforge::test::replay_fuzz_inputs(argc, argv, [](const auto& f, const std::string& bytes) {
    const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
    const auto mem = check_one(std::vector<uint8_t>(p, p + bytes.size()));
    const auto file = qforge::host::find_exported_function(f.string(), kSymbol, kPrefix);
    if (file.status != mem.status || file.reason != mem.reason ||
        file.same_prefix != mem.same_prefix) {
      std::fprintf(stderr, "%s: the file reader says %s (%s), the memory reader %s (%s)\n",
                   f.c_str(), to_string(file.status), file.reason.c_str(),
                   to_string(mem.status), mem.reason.c_str());
      return false;
    }
    // Seeds named function_* must stay found, or the fuzzer starts from nothing.
    if (f.filename().string().rfind("function_", 0) == 0 &&
        mem.status != ElfSymbolStatus::function) {
      std::fprintf(stderr, "seed %s: %s (%s)\n", f.c_str(), to_string(mem.status),
                   mem.reason.c_str());
      return false;
    }
    return true;
  });
}
#endif
