// The ELF reader the registry checks a library with before dlopen
// (host/src/plugins/elf_symbols.cpp): the in-tree plugins and stripped copies
// of them are found through .dynsym or PT_DYNAMIC; the entry as data, only
// referenced, hidden or absent is told apart; and corrupted or truncated
// copies, empty files, directories and FIFOs are refused with one line,
// without a crash and without a large allocation.
#include <elf.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "qforge_host/plugins/elf_symbols.hpp"

namespace fs = std::filesystem;
using qforge::host::ElfSymbolCheck;
using qforge::host::ElfSymbolStatus;
using qforge::host::find_exported_function;

namespace {

const std::string kEntry = "qforge_plugin_entry_v1";
const std::string kPrefix = "qforge_plugin_entry_v";
using Bytes = std::vector<uint8_t>;

std::string seed(const std::string& name) {
  return std::string(QFORGE_TEST_ELF_SEED_DIR) + "/" + name + ".so";
}

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in) << p;
  return Bytes((std::istreambuf_iterator<char>(in)), {});
}

void write_bytes(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  ASSERT_TRUE(out.good()) << p;
}

std::vector<fs::path> in_tree_plugins() {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(QFORGE_TEST_DEFAULT_PLUGIN_DIR, ec)) {
    if (e.path().extension() == ".so") out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string describe(const ElfSymbolCheck& r) {
  return std::string(to_string(r.status)) + " (" + r.reason + ")";
}

// A refusal is one non-empty line.
void expect_invalid(const ElfSymbolCheck& r, const std::string& contains, const std::string& ctx) {
  EXPECT_EQ(r.status, ElfSymbolStatus::invalid) << ctx << ": " << describe(r);
  EXPECT_FALSE(r.reason.empty()) << ctx;
  EXPECT_EQ(r.reason.find('\n'), std::string::npos) << ctx << ": " << r.reason;
  if (!contains.empty()) {
    EXPECT_NE(r.reason.find(contains), std::string::npos) << ctx << ": " << r.reason;
  }
}

// Peak RSS in KiB. Under AddressSanitizer freed memory stays in quarantine,
// so the growth checks would measure that instead: they are off there.
#if defined(__SANITIZE_ADDRESS__)
#define QFORGE_TEST_RSS_CHECKS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QFORGE_TEST_RSS_CHECKS 0
#endif
#endif
#ifndef QFORGE_TEST_RSS_CHECKS
#define QFORGE_TEST_RSS_CHECKS 1
#endif

long max_rss_kib() {
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

// The corruption cases allocate nothing sized by a header field: the peak
// RSS grows by less than 8 MiB across them (Boost's parser reached 3 GB).
void expect_small_rss_growth(long before_kib) {
  if (QFORGE_TEST_RSS_CHECKS) {
    EXPECT_LT(max_rss_kib() - before_kib, 8 * 1024) << "KiB of peak RSS growth";
  }
}

// Section headers of a valid image (checked by the test, not trusted blindly).
Elf64_Ehdr ehdr(const Bytes& b) {
  Elf64_Ehdr h;
  EXPECT_GE(b.size(), sizeof h);
  std::memcpy(&h, b.data(), sizeof h);
  return h;
}

// Offset of the first section header of `type`, or 0.
size_t shdr_at(const Bytes& b, uint32_t type) {
  const Elf64_Ehdr h = ehdr(b);
  for (size_t i = 0; i < h.e_shnum; ++i) {
    const size_t at = h.e_shoff + i * sizeof(Elf64_Shdr);
    if (at + sizeof(Elf64_Shdr) > b.size()) return 0;
    Elf64_Shdr s;
    std::memcpy(&s, b.data() + at, sizeof s);
    if (s.sh_type == type) return at;
  }
  return 0;
}

Elf64_Shdr shdr(const Bytes& b, size_t at) {
  Elf64_Shdr s;
  std::memcpy(&s, b.data() + at, sizeof s);
  return s;
}

template <class T>
void put(Bytes& b, size_t at, T v) {
  ASSERT_LE(at + sizeof v, b.size());
  std::memcpy(b.data() + at, &v, sizeof v);
}

// A copy without section headers: only PT_DYNAMIC is left to find .dynsym.
Bytes without_section_headers(Bytes b) {
  put<Elf64_Off>(b, offsetof(Elf64_Ehdr, e_shoff), 0);
  put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shnum), 0);
  put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shstrndx), 0);
  return b;
}

class ElfSymbols : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/qforge-elf-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    plugins_ = in_tree_plugins();
    ASSERT_FALSE(plugins_.empty()) << "no plugin in " << QFORGE_TEST_DEFAULT_PLUGIN_DIR;
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, ec);
    fs::remove_all(dir_, ec);
  }
  // Writes b to <dir>/<name> and looks the entry up in it.
  ElfSymbolCheck check_bytes(const std::string& name, const Bytes& b) {
    const fs::path p = dir_ / name;
    write_bytes(p, b);
    return find_exported_function(p.string(), kEntry, kPrefix);
  }
  fs::path strip_copy(const fs::path& from, const std::string& how, const std::string& name) {
    const fs::path to = dir_ / name;
    const std::string cmd = std::string("'") + QFORGE_TEST_STRIP + "' " + how + " -o '" +
                            to.string() + "' '" + from.string() + "'";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return to;
  }

  fs::path dir_;
  std::vector<fs::path> plugins_;
};

TEST_F(ElfSymbols, InTreePluginsExportTheEntryFunction) {
  for (const auto& p : plugins_) {
    const auto r = find_exported_function(p.string(), kEntry, kPrefix);
    EXPECT_EQ(r.status, ElfSymbolStatus::function) << p << ": " << describe(r);
    EXPECT_TRUE(r.reason.empty());
    // The in-memory reader agrees.
    const Bytes b = read_bytes(p);
    const auto m = find_exported_function(b.data(), b.size(), kEntry, kPrefix);
    EXPECT_EQ(m.status, r.status) << p;
  }
}

// D4: what `cmake --install --strip` and vendors ship.
TEST_F(ElfSymbols, StrippedPluginsAreFound) {
  for (const auto& p : plugins_) {
    const fs::path unneeded = strip_copy(p, "--strip-unneeded", "unneeded.so");
    const Bytes u = read_bytes(unneeded);
    ASSERT_EQ(shdr_at(u, SHT_SYMTAB), 0u) << "strip left a .symtab in " << unneeded;
    EXPECT_EQ(find_exported_function(unneeded.string(), kEntry).status, ElfSymbolStatus::function)
        << p;
    const fs::path all = strip_copy(p, "--strip-all", "all.so");
    EXPECT_EQ(find_exported_function(all.string(), kEntry).status, ElfSymbolStatus::function) << p;
  }
}

TEST_F(ElfSymbols, WithoutSectionHeadersFoundThroughPtDynamic) {
  for (const auto& p : plugins_) {
    const Bytes b = without_section_headers(read_bytes(p));
    const auto r = check_bytes("noshdr.so", b);
    EXPECT_EQ(r.status, ElfSymbolStatus::function) << p << ": " << describe(r);
    const fs::path all = strip_copy(p, "--strip-all", "all.so");
    const auto s = check_bytes("all_noshdr.so", without_section_headers(read_bytes(all)));
    EXPECT_EQ(s.status, ElfSymbolStatus::function) << p << ": " << describe(s);
  }
  // DT_GNU_HASH only, DT_HASH only, both (with an IFUNC entry).
  for (const char* name : {"function_gnu", "function_sysv", "function_ifunc"}) {
    const auto r = check_bytes("seed.so", without_section_headers(read_bytes(seed(name))));
    EXPECT_EQ(r.status, ElfSymbolStatus::function) << name << ": " << describe(r);
  }
  const auto d = check_bytes("data.so", without_section_headers(read_bytes(seed("data_entry"))));
  EXPECT_EQ(d.status, ElfSymbolStatus::not_function) << describe(d);
  const auto v2 = check_bytes("v2.so", without_section_headers(read_bytes(seed("v2_only"))));
  EXPECT_EQ(v2.status, ElfSymbolStatus::not_found) << describe(v2);
  EXPECT_EQ(v2.same_prefix, "qforge_plugin_entry_v2");
}

TEST_F(ElfSymbols, SeedLibrariesAreToldApart) {
  for (const char* name : {"function_gnu", "function_sysv", "function_ifunc"}) {
    const auto r = find_exported_function(seed(name), kEntry, kPrefix);
    EXPECT_EQ(r.status, ElfSymbolStatus::function) << name << ": " << describe(r);
    EXPECT_TRUE(r.same_prefix.empty()) << name;
  }
  // Exported as data: the registry refuses "entry symbol is not a function".
  const auto d = find_exported_function(seed("data_entry"), kEntry, kPrefix);
  EXPECT_EQ(d.status, ElfSymbolStatus::not_function) << describe(d);
  EXPECT_NE(d.reason.find("STT_OBJECT"), std::string::npos) << d.reason;
  // Only referenced (SHN_UNDEF), or defined with hidden visibility: not exported.
  for (const char* name : {"undefined_entry", "hidden_entry"}) {
    const auto r = find_exported_function(seed(name), kEntry, kPrefix);
    EXPECT_EQ(r.status, ElfSymbolStatus::not_found) << name << ": " << describe(r);
    EXPECT_TRUE(r.same_prefix.empty()) << name << ": " << r.same_prefix;
  }
  // Another major's entry is named, so the registry can say which.
  const auto v2 = find_exported_function(seed("v2_only"), kEntry, kPrefix);
  EXPECT_EQ(v2.status, ElfSymbolStatus::not_found) << describe(v2);
  EXPECT_EQ(v2.same_prefix, "qforge_plugin_entry_v2");
  EXPECT_EQ(find_exported_function(seed("v2_only"), kEntry).same_prefix, "");
  // Any other exported function is found too.
  EXPECT_EQ(find_exported_function(seed("data_entry"), "qforge_test_elf_other").status,
            ElfSymbolStatus::function);
}

TEST_F(ElfSymbols, LibrariesWithoutTheEntryAreNotFound) {
  for (const char* path : {QFORGE_TEST_NO_ENTRY, QFORGE_TEST_V2_ONLY}) {
    const auto r = find_exported_function(path, kEntry, kPrefix);
    EXPECT_EQ(r.status, ElfSymbolStatus::not_found) << path << ": " << describe(r);
  }
  EXPECT_EQ(find_exported_function(QFORGE_TEST_NO_ENTRY, kEntry, kPrefix).same_prefix, "");
  EXPECT_EQ(find_exported_function(QFORGE_TEST_V2_ONLY, kEntry, kPrefix).same_prefix,
            "qforge_plugin_entry_v2");
}

// D2: the .symtab corruptions that crashed Boost's parser do not matter (the
// static table is not read), and the same ones in .dynsym are refused.
TEST_F(ElfSymbols, CorruptedTablesAreRefusedWithOneLine) {
  const Bytes good = read_bytes(plugins_.front());
  const long rss_before = max_rss_kib();

  // st_name out of range, as in the D2 reproducer: first in .symtab, ignored...
  const size_t symtab = shdr_at(good, SHT_SYMTAB);
  if (symtab != 0) {
    Bytes b = good;
    const Elf64_Shdr s = shdr(b, symtab);
    for (uint64_t k = s.sh_offset; k + sizeof(Elf64_Sym) <= s.sh_offset + s.sh_size;
         k += sizeof(Elf64_Sym)) {
      Elf64_Sym sym;
      std::memcpy(&sym, b.data() + k, sizeof sym);
      if (ELF64_ST_BIND(sym.st_info) != STB_LOCAL && sym.st_value != 0)
        put<Elf64_Word>(b, k, 0xFFFFFF00u);
    }
    EXPECT_EQ(check_bytes("symtab_stname.so", b).status, ElfSymbolStatus::function);
    Bytes big = good;  // D2's 3 GB .symtab sh_size: not read either
    put<Elf64_Xword>(big, symtab + offsetof(Elf64_Shdr, sh_size), 3000000000ull);
    EXPECT_EQ(check_bytes("symtab_size.so", big).status, ElfSymbolStatus::function);
  }
  // ...then in .dynsym: refused, the cause named.
  const size_t dynsym = shdr_at(good, SHT_DYNSYM);
  ASSERT_NE(dynsym, 0u);
  const Elf64_Shdr ds = shdr(good, dynsym);
  {
    Bytes b = good;
    for (uint64_t k = ds.sh_offset + sizeof(Elf64_Sym); k < ds.sh_offset + ds.sh_size;
         k += sizeof(Elf64_Sym))
      put<Elf64_Word>(b, k, 0xFFFFFF00u);
    expect_invalid(check_bytes("dynsym_stname.so", b), "out of range", "dynsym st_name");
    expect_invalid(check_bytes("dynsym_stname_noshdr.so", without_section_headers(b)),
                   "out of range", "dynsym st_name, no section headers");
  }
  // Sizes and offsets from the headers, each checked against the file.
  const size_t dynstr = ehdr(good).e_shoff + ds.sh_link * sizeof(Elf64_Shdr);
  struct Patch {
    const char* what;
    size_t at;
    uint64_t value;
  };
  const Patch patches[] = {
      {"dynsym sh_size 3e9", dynsym + offsetof(Elf64_Shdr, sh_size), 3000000000ull},
      {"dynsym sh_size 2^60", dynsym + offsetof(Elf64_Shdr, sh_size), 1ull << 60},
      {"dynsym sh_size -24", dynsym + offsetof(Elf64_Shdr, sh_size), ~uint64_t{0} - 23},
      {"dynsym sh_offset past EOF", dynsym + offsetof(Elf64_Shdr, sh_offset), good.size() + 8},
      {"dynsym sh_offset -1", dynsym + offsetof(Elf64_Shdr, sh_offset), ~uint64_t{0}},
      {"dynstr sh_size 3e9", dynstr + offsetof(Elf64_Shdr, sh_size), 3000000000ull},
      {"dynstr sh_offset past EOF", dynstr + offsetof(Elf64_Shdr, sh_offset), good.size()},
      {"e_shoff past EOF", offsetof(Elf64_Ehdr, e_shoff), good.size() - 16},
      {"e_shoff -1", offsetof(Elf64_Ehdr, e_shoff), ~uint64_t{0}},
  };
  for (const auto& p : patches) {
    Bytes b = good;
    put<uint64_t>(b, p.at, p.value);
    expect_invalid(check_bytes("patched.so", b), "", p.what);
  }
  {
    Bytes b = good;  // sh_link of .dynsym out of range
    put<Elf64_Word>(b, dynsym + offsetof(Elf64_Shdr, sh_link), 0xFFFFu);
    expect_invalid(check_bytes("link.so", b), "sh_link", "dynsym sh_link");
    b = good;  // e_shnum larger than the table
    put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_shnum), 0xFFF0);
    expect_invalid(check_bytes("shnum.so", b), "section header table", "e_shnum");
  }
  // Without section headers: PT_DYNAMIC's offsets and the symbol count.
  {
    const Bytes n = without_section_headers(good);
    Elf64_Ehdr h = ehdr(n);
    for (size_t i = 0; i < h.e_phnum; ++i) {
      const size_t at = h.e_phoff + i * sizeof(Elf64_Phdr);
      Elf64_Phdr ph;
      std::memcpy(&ph, n.data() + at, sizeof ph);
      if (ph.p_type == PT_DYNAMIC) {
        Bytes b = n;
        put<Elf64_Off>(b, at + offsetof(Elf64_Phdr, p_offset), n.size() - 8);
        expect_invalid(check_bytes("dyn_off.so", b), "PT_DYNAMIC", "PT_DYNAMIC past EOF");
        b = n;
        put<Elf64_Xword>(b, at + offsetof(Elf64_Phdr, p_filesz), 3000000000ull);
        expect_invalid(check_bytes("dyn_size.so", b), "PT_DYNAMIC", "PT_DYNAMIC size 3e9");
        // DT_STRSZ 3e9 and DT_GNU_HASH/DT_HASH bucket counts of 2^32-1.
        for (uint64_t k = ph.p_offset; k + sizeof(Elf64_Dyn) <= ph.p_offset + ph.p_filesz;
             k += sizeof(Elf64_Dyn)) {
          Elf64_Dyn d;
          std::memcpy(&d, n.data() + k, sizeof d);
          if (d.d_tag == DT_STRSZ) {
            b = n;
            put<Elf64_Xword>(b, k + 8, 3000000000ull);
            expect_invalid(check_bytes("strsz.so", b), "DT_STRTAB", "DT_STRSZ 3e9");
          }
          if (d.d_tag == DT_SYMTAB || d.d_tag == DT_GNU_HASH) {
            b = n;
            put<Elf64_Addr>(b, k + 8, 0x7fff0000000ull);
            expect_invalid(check_bytes("addr.so", b), "not in any loaded segment",
                           "address outside the segments");
          }
        }
      }
      if (ph.p_type == PT_LOAD) {
        Bytes b = n;
        put<Elf64_Xword>(b, at + offsetof(Elf64_Phdr, p_filesz), 3000000000ull);
        const auto r = check_bytes("load.so", b);  // refused if the tables are in it
        if (r.status == ElfSymbolStatus::invalid) expect_invalid(r, "", "PT_LOAD size 3e9");
      }
    }
    Bytes b = n;  // no program headers either
    put<Elf64_Off>(b, offsetof(Elf64_Ehdr, e_phoff), 0);
    expect_invalid(check_bytes("nophdr.so", b), "no dynamic symbol table", "no headers at all");
    b = n;
    put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_phnum), 0xFFF0);
    expect_invalid(check_bytes("phnum.so", b), "program header table", "e_phnum");
  }
  // DT_HASH's nchain of 2^32-1 (a library with only DT_HASH).
  {
    const Bytes s = without_section_headers(read_bytes(seed("function_sysv")));
    const Bytes withsh = read_bytes(seed("function_sysv"));
    const size_t hash = shdr_at(withsh, SHT_HASH);
    ASSERT_NE(hash, 0u);
    Bytes b = s;
    put<uint32_t>(b, shdr(withsh, hash).sh_offset + 4, 0xFFFFFFFFu);
    expect_invalid(check_bytes("nchain.so", b), "", "DT_HASH nchain 2^32-1");
  }
  // DT_GNU_HASH's counts of 2^32-1.
  {
    const Bytes withsh = read_bytes(seed("function_gnu"));
    const size_t gh = shdr_at(withsh, SHT_GNU_HASH);
    ASSERT_NE(gh, 0u);
    const uint64_t off = shdr(withsh, gh).sh_offset;
    for (size_t field = 0; field < 3; ++field) {
      Bytes b = without_section_headers(withsh);
      put<uint32_t>(b, off + 4 * field, 0xFFFFFFFFu);
      const auto r = check_bytes("gnuhash.so", b);
      EXPECT_NE(r.status, ElfSymbolStatus::function) << "field " << field << ": " << describe(r);
      if (r.status == ElfSymbolStatus::invalid) expect_invalid(r, "", "DT_GNU_HASH");
    }
  }
  // Not a plugin for this host.
  {
    Bytes b = good;
    b[EI_CLASS] = ELFCLASS32;
    expect_invalid(check_bytes("class.so", b), "32-bit", "ELFCLASS32");
    b = good;
    b[EI_DATA] = ELFDATA2MSB;
    expect_invalid(check_bytes("endian.so", b), "big-endian", "ELFDATA2MSB");
    b = good;
    put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_machine),
                    ehdr(good).e_machine == EM_X86_64 ? EM_AARCH64 : EM_X86_64);
    expect_invalid(check_bytes("machine.so", b), "built for", "e_machine");
    b = good;
    put<Elf64_Half>(b, offsetof(Elf64_Ehdr, e_type), ET_REL);
    expect_invalid(check_bytes("rel.so", b), "not a shared library", "ET_REL");
    b = good;
    b[1] = 'F';
    expect_invalid(check_bytes("magic.so", b), "bad magic", "bad magic");
  }
  expect_small_rss_growth(rss_before);
}

TEST_F(ElfSymbols, TruncatedCopiesAreRefused) {
  const Bytes good = read_bytes(plugins_.front());
  const long rss_before = max_rss_kib();
  std::vector<size_t> lengths;
  for (size_t n = 1; n < 64; ++n) lengths.push_back(n);
  for (size_t n = 64; n <= 4096 && n < good.size(); n += 64) lengths.push_back(n);
  lengths.push_back(good.size() / 2);
  lengths.push_back(good.size() - 1);
  for (size_t n : lengths) {
    const Bytes b(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    expect_invalid(check_bytes("truncated.so", b), "", "truncated to " + std::to_string(n));
    // And the in-memory reader, exactly sized.
    const auto m = find_exported_function(b.data(), b.size(), kEntry);
    EXPECT_EQ(m.status, ElfSymbolStatus::invalid) << n;
  }
  // Truncated copies without section headers (the PT_DYNAMIC path).
  const Bytes n = without_section_headers(good);
  for (size_t len = 64; len <= 4096 && len < n.size(); len += 64) {
    const Bytes b(n.begin(), n.begin() + static_cast<std::ptrdiff_t>(len));
    const auto r = find_exported_function(b.data(), b.size(), kEntry);
    EXPECT_EQ(r.status, ElfSymbolStatus::invalid) << len << ": " << describe(r);
  }
  expect_small_rss_growth(rss_before);
}

// Random corruptions of a small library: any result, but never a crash,
// always a valid status and a one-line reason.
TEST_F(ElfSymbols, RandomCorruptionsNeverCrash) {
  const long rss_before = max_rss_kib();
  std::mt19937_64 rng(20240607);
  for (const char* name : {"function_gnu", "function_sysv", "data_entry"}) {
    for (const Bytes& base : {read_bytes(seed(name)), without_section_headers(read_bytes(seed(name)))}) {
      for (int iter = 0; iter < 3000; ++iter) {
        Bytes b = base;
        const int flips = 1 + static_cast<int>(rng() % 8);
        for (int f = 0; f < flips; ++f) {
          const size_t at = rng() % b.size();
          switch (rng() % 3) {
            case 0: b[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
            case 1: b[at] = 0xFF; break;
            default: b[at] = static_cast<uint8_t>(rng()); break;
          }
        }
        const auto r = find_exported_function(b.data(), b.size(), kEntry, kPrefix);
        if (r.status == ElfSymbolStatus::invalid || r.status == ElfSymbolStatus::not_function) {
          ASSERT_FALSE(r.reason.empty());
          ASSERT_EQ(r.reason.find('\n'), std::string::npos) << r.reason;
        }
      }
    }
  }
  expect_small_rss_growth(rss_before);
}

TEST_F(ElfSymbols, NonLibrariesAreRefusedWithOneLine) {
  const long rss_before = max_rss_kib();
  expect_invalid(check_bytes("empty.so", {}), "empty", "empty file");
  expect_invalid(find_exported_function(nullptr, 0, kEntry), "empty", "empty buffer");
  expect_invalid(check_bytes("text.so", Bytes{'/', '*', ' ', 'G', 'N', 'U', ' ', 'l', 'd'}),
                 "bad magic", "linker script");
  expect_invalid(check_bytes("magic.so", Bytes{0x7f, 'E', 'L', 'F'}), "truncated", "magic only");
  expect_invalid(check_bytes("magic3.so", Bytes{0x7f, 'E', 'L'}), "truncated", "3 bytes of magic");
  expect_invalid(find_exported_function(dir_.string(), kEntry), "directory", "a directory");
  const fs::path fifo = dir_ / "fifo.so";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  expect_invalid(find_exported_function(fifo.string(), kEntry), "FIFO", "a FIFO");  // no wait
  expect_invalid(find_exported_function("/dev/null", kEntry), "not a regular file", "/dev/null");
  expect_invalid(find_exported_function((dir_ / "missing.so").string(), kEntry),
                 "No such file", "missing");
  // Larger than the limit (sparse: no disk used).
  const fs::path huge = dir_ / "huge.so";
  {
    const int fd = ::open(huge.c_str(), O_CREAT | O_WRONLY, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, static_cast<off_t>(qforge::host::kMaxElfFileBytes + 1)), 0);
    ::close(fd);
  }
  expect_invalid(find_exported_function(huge.string(), kEntry), "limit", "over 1 GiB");
  expect_small_rss_growth(rss_before);
  // Permission denied (root reads anything).
  if (geteuid() != 0) {
    const fs::path locked = dir_ / "locked.so";
    fs::copy_file(plugins_.front(), locked);
    fs::permissions(locked, fs::perms::none);
    expect_invalid(find_exported_function(locked.string(), kEntry), "Permission denied",
                   "unreadable");
  }
}

}  // namespace
