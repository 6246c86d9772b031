// A small, bounds-checked reader of an ELF shared library's dynamic symbol
// table: is a given symbol exported as a function? The registry asks this
// before dlopen (which runs the library's constructors), so the file is not
// trusted: every offset, size and count is checked against the file size
// before it is used, nothing is allocated from a header field that is not
// first bounded by the file size, and a malformed file is refused with a
// one-line reason instead of being read out of bounds.
//
// Only .dynsym is read (what dlopen/dlsym use), so stripped libraries work.
// It is found through the section headers (SHT_DYNSYM and its sh_link) or,
// when those are stripped, through PT_DYNAMIC (DT_SYMTAB, DT_STRTAB, DT_STRSZ,
// and DT_HASH or DT_GNU_HASH for the number of symbols).
//
// Accepted: ELFCLASS64, little-endian, ET_DYN, for this host's machine
// (x86-64 or AArch64). No LibTorch, no Boost, no libelf; never throws except
// std::bad_alloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace qforge::host {

enum class ElfSymbolStatus {
  function,      // exported, defined, STT_FUNC or STT_GNU_IFUNC
  not_function,  // exported and defined, but another type (e.g. a data object)
  not_found,     // a valid library that does not export the symbol
  invalid,       // not a readable ELF shared library for this host
};

struct ElfSymbolCheck {
  ElfSymbolStatus status = ElfSymbolStatus::invalid;
  // invalid: one line naming the cause ("bad magic: not an ELF file", ...);
  // not_function: the symbol's type ("STT_OBJECT"); empty otherwise. Never
  // names the path (the caller does).
  std::string reason;
  // not_found, when a prefix was given: the first exported symbol whose name
  // starts with it (e.g. "qforge_plugin_entry_v2"); empty if none. Only
  // names of printable ASCII, at most 128 characters, are reported.
  std::string same_prefix;
};

// The largest file looked at; bigger ones are refused as invalid.
inline constexpr uint64_t kMaxElfFileBytes = uint64_t{1} << 30;

// Exported means: binding STB_GLOBAL or STB_WEAK, visibility default or
// protected, st_shndx != SHN_UNDEF. Reads the file with POSIX I/O; refuses
// anything but a regular file (directories, FIFOs, devices) without blocking.
ElfSymbolCheck find_exported_function(const std::string& path, const std::string& symbol,
                                      const std::string& prefix = {});

// The same over a file image already in memory (the fuzz target's entry).
ElfSymbolCheck find_exported_function(const uint8_t* data, size_t size,
                                      const std::string& symbol,
                                      const std::string& prefix = {});

// "function", "not a function", "not found", "invalid".
const char* to_string(ElfSymbolStatus status);

}  // namespace qforge::host
