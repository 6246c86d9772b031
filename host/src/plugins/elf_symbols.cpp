// A bounds-checked reader of an ELF file's dynamic symbol table (see the
// header). Every read goes through Reader::read, which refuses a range that
// is not inside the file; every table is walked in bounded chunks, so memory
// stays small whatever the headers claim. The one buffer sized from the file
// is the string table, and only once its range is known to lie in the file.
#include "qforge_host/plugins/elf_symbols.hpp"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace qforge::host {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "elf_symbols.cpp reads little-endian ELF files in host byte order");

#if defined(__x86_64__)
constexpr uint16_t kHostMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr uint16_t kHostMachine = EM_AARCH64;
#else
constexpr uint16_t kHostMachine = EM_NONE;  // every file is refused
#endif

// Thrown inside this file only; find_exported_function turns it into a result.
struct Invalid {
  std::string reason;
};

[[noreturn]] void invalid(std::string reason) { throw Invalid{std::move(reason)}; }

std::string num(uint64_t v) { return std::to_string(v); }

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string machine_name(uint16_t m) {
  switch (m) {
    case EM_386: return "i386";
    case EM_X86_64: return "x86-64";
    case EM_ARM: return "ARM (32-bit)";
    case EM_AARCH64: return "AArch64";
    case EM_PPC64: return "PowerPC64";
    case EM_S390: return "s390";
    case EM_RISCV: return "RISC-V";
    case EM_NONE: return "no machine (EM_NONE)";
    default: return "machine " + num(m);
  }
}

// Random access to the file's bytes, refusing anything outside [0, size).
class Reader {
 public:
  virtual ~Reader() = default;
  uint64_t size() const { return size_; }

  // True if [off, off + len) lies inside the file (no overflow).
  bool contains(uint64_t off, uint64_t len) const { return off <= size_ && len <= size_ - off; }

  // Reads [off, off + len) or refuses the file, naming `what`.
  void read(uint64_t off, void* dst, size_t len, const char* what) {
    if (!contains(off, len))
      invalid(std::string(what) + " (offset " + num(off) + ", " + num(len) +
              " bytes) runs past the end of the file (" + num(size_) + " bytes)");
    if (len > 0) read_in(off, dst, len);
  }

  template <class T>
  T read_one(uint64_t off, const char* what) {
    T v;
    read(off, &v, sizeof v, what);
    return v;
  }

  // Calls f(index, entry) for each of `count` entries of type T starting at
  // `off`, reading at most 64 KiB at a time; f returns false to stop early.
  // The whole table is checked to lie in the file first.
  template <class T, class F>
  void for_each(uint64_t off, uint64_t count, const char* what, F&& f) {
    if (count > size_ / sizeof(T) || !contains(off, count * sizeof(T)))
      invalid(std::string(what) + " (offset " + num(off) + ", " + num(count) + " entries of " +
              num(sizeof(T)) + " bytes) runs past the end of the file (" + num(size_) + " bytes)");
    constexpr uint64_t kChunk = std::max<uint64_t>(1, (64 * 1024) / sizeof(T));
    std::vector<T> buf(static_cast<size_t>(std::min(count, kChunk)));
    for (uint64_t i = 0; i < count;) {
      const uint64_t n = std::min(count - i, kChunk);
      read(off + i * sizeof(T), buf.data(), static_cast<size_t>(n * sizeof(T)), what);
      for (uint64_t k = 0; k < n; ++k)
        if (!f(i + k, buf[static_cast<size_t>(k)])) return;
      i += n;
    }
  }

 protected:
  virtual void read_in(uint64_t off, void* dst, size_t len) = 0;
  uint64_t size_ = 0;
};

class MemoryReader final : public Reader {
 public:
  MemoryReader(const uint8_t* data, size_t size) : data_(data) { size_ = size; }

 private:
  void read_in(uint64_t off, void* dst, size_t len) override {
    std::memcpy(dst, data_ + off, len);
  }
  const uint8_t* data_;
};

class FileReader final : public Reader {
 public:
  explicit FileReader(const std::string& path) {
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd_ < 0) invalid(std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) invalid(std::string("cannot stat: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) invalid("is a directory, not a shared library");
    if (S_ISFIFO(st.st_mode)) invalid("is a FIFO, not a regular file");
    if (!S_ISREG(st.st_mode)) invalid("not a regular file (a device or socket)");
    if (st.st_size < 0 || static_cast<uint64_t>(st.st_size) > kMaxElfFileBytes)
      invalid(num(static_cast<uint64_t>(st.st_size)) + " bytes, larger than the " +
              num(kMaxElfFileBytes >> 20) + " MiB limit for a shared library");
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~FileReader() override {
    if (fd_ >= 0) ::close(fd_);
  }
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

 private:
  void read_in(uint64_t off, void* dst, size_t len) override {
    auto* p = static_cast<char*>(dst);
    while (len > 0) {
      const ssize_t n = ::pread(fd_, p, len, static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) invalid("read error at offset " + num(off) + ": " + std::strerror(errno));
      if (n == 0) invalid("the file shrank while being read (end of file at offset " + num(off) + ")");
      p += n;
      off += static_cast<uint64_t>(n);
      len -= static_cast<size_t>(n);
    }
  }
  int fd_ = -1;
};

// Where the dynamic symbols and their names are, in file offsets.
struct DynamicTables {
  uint64_t sym_off = 0;
  uint64_t sym_count = 0;
  uint64_t str_off = 0;
  uint64_t str_size = 0;
  const char* source = "";  // for messages: ".dynsym" or "DT_SYMTAB"
};

// A name short and plain enough to quote in a message (it comes from the file).
bool printable(const char* name) {
  size_t n = 0;
  for (; name[n] != '\0'; ++n)
    if (n >= 128 || name[n] < 0x21 || name[n] > 0x7e) return false;
  return true;
}

class Parser {
 public:
  Parser(Reader& r, const std::string& symbol, const std::string& prefix)
      : r_(r), symbol_(symbol), prefix_(prefix) {}

  ElfSymbolCheck run() {
    check_header();
    DynamicTables t;
    if (!from_sections(t)) from_dynamic(t);
    return scan(t);
  }

 private:
  void check_header() {
    if (r_.size() == 0) invalid("empty file (0 bytes), not an ELF shared library");
    unsigned char ident[EI_NIDENT] = {};
    const size_t n = static_cast<size_t>(std::min<uint64_t>(r_.size(), EI_NIDENT));
    r_.read(0, ident, n, "ELF identification");
    if (std::memcmp(ident, ELFMAG, std::min<size_t>(n, SELFMAG)) != 0)
      invalid("bad magic: not an ELF file");
    if (r_.size() < sizeof(Elf64_Ehdr))
      invalid("truncated: " + num(r_.size()) + " bytes, shorter than an ELF header (" +
              num(sizeof(Elf64_Ehdr)) + ")");
    if (ident[EI_CLASS] == ELFCLASS32)
      invalid("32-bit ELF (ELFCLASS32); this host loads only 64-bit libraries");
    if (ident[EI_CLASS] != ELFCLASS64) invalid("unknown ELF class " + num(ident[EI_CLASS]));
    if (ident[EI_DATA] == ELFDATA2MSB)
      invalid("big-endian ELF (ELFDATA2MSB); this host is little-endian");
    if (ident[EI_DATA] != ELFDATA2LSB) invalid("unknown ELF data encoding " + num(ident[EI_DATA]));
    if (ident[EI_VERSION] != EV_CURRENT) invalid("unknown ELF version " + num(ident[EI_VERSION]));
    r_.read(0, &eh_, sizeof eh_, "ELF header");
    if (eh_.e_type != ET_DYN)
      invalid("not a shared library: " +
              std::string(eh_.e_type == ET_EXEC   ? "an executable (ET_EXEC)"
                          : eh_.e_type == ET_REL  ? "a relocatable object (ET_REL)"
                          : eh_.e_type == ET_CORE ? "a core dump (ET_CORE)"
                                                  : "e_type " + num(eh_.e_type)));
    if (eh_.e_machine != kHostMachine)
      invalid("built for " + machine_name(eh_.e_machine) + "; this host is " +
              machine_name(kHostMachine));
  }

  // The section header table, if the file has one. Returns false when it has
  // none or no SHT_DYNSYM section (then PT_DYNAMIC is tried).
  bool from_sections(DynamicTables& t) {
    if (eh_.e_shoff == 0) return false;
    if (eh_.e_shentsize != sizeof(Elf64_Shdr))
      invalid("section header size e_shentsize " + num(eh_.e_shentsize) + ", expected " +
              num(sizeof(Elf64_Shdr)));
    uint64_t shnum = eh_.e_shnum;
    if (shnum == 0) {  // extended numbering: the count is section 0's sh_size
      const auto s0 = r_.read_one<Elf64_Shdr>(eh_.e_shoff, "section header table");
      shnum = s0.sh_size;
      if (shnum == 0) return false;
    }
    bool found = false;
    Elf64_Shdr dynsym{};
    r_.for_each<Elf64_Shdr>(eh_.e_shoff, shnum, "section header table",
                            [&](uint64_t, const Elf64_Shdr& s) {
                              if (s.sh_type != SHT_DYNSYM) return true;
                              dynsym = s;
                              found = true;
                              return false;
                            });
    if (!found) return false;
    if (dynsym.sh_entsize != sizeof(Elf64_Sym))
      invalid(".dynsym entry size " + num(dynsym.sh_entsize) + ", expected " +
              num(sizeof(Elf64_Sym)));
    if (dynsym.sh_size % sizeof(Elf64_Sym) != 0)
      invalid(".dynsym size " + num(dynsym.sh_size) + " is not a multiple of its entry size");
    if (!r_.contains(dynsym.sh_offset, dynsym.sh_size))
      invalid(".dynsym (offset " + num(dynsym.sh_offset) + ", " + num(dynsym.sh_size) +
              " bytes) runs past the end of the file (" + num(r_.size()) + " bytes)");
    if (dynsym.sh_link == 0 || dynsym.sh_link >= shnum)
      invalid(".dynsym's string table index sh_link " + num(dynsym.sh_link) +
              " is out of range (" + num(shnum) + " sections)");
    const auto str = r_.read_one<Elf64_Shdr>(eh_.e_shoff + uint64_t{dynsym.sh_link} * sizeof(Elf64_Shdr),
                                             "section header table");
    if (str.sh_type != SHT_STRTAB)
      invalid(".dynsym's string table (section " + num(dynsym.sh_link) +
              ") is not a string table (sh_type " + num(str.sh_type) + ")");
    if (!r_.contains(str.sh_offset, str.sh_size))
      invalid(".dynstr (offset " + num(str.sh_offset) + ", " + num(str.sh_size) +
              " bytes) runs past the end of the file (" + num(r_.size()) + " bytes)");
    t.sym_off = dynsym.sh_offset;
    t.sym_count = dynsym.sh_size / sizeof(Elf64_Sym);
    t.str_off = str.sh_offset;
    t.str_size = str.sh_size;
    t.source = ".dynsym";
    return true;
  }

  // Maps a virtual address to a file offset through the PT_LOAD segments;
  // `avail` receives how many file-backed bytes follow it in that segment.
  uint64_t map_vaddr(uint64_t vaddr, uint64_t& avail, const char* what) const {
    for (const auto& p : loads_) {
      if (vaddr < p.p_vaddr || vaddr - p.p_vaddr >= p.p_filesz) continue;
      const uint64_t delta = vaddr - p.p_vaddr;
      if (!r_.contains(p.p_offset, p.p_filesz))
        invalid("a PT_LOAD segment (offset " + num(p.p_offset) + ", " + num(p.p_filesz) +
                " bytes) runs past the end of the file (" + num(r_.size()) + " bytes)");
      avail = p.p_filesz - delta;
      return p.p_offset + delta;
    }
    invalid(std::string(what) + " address " + hex(vaddr) + " is not in any loaded segment");
  }

  uint64_t to_offset(uint64_t vaddr, uint64_t len, const char* what) const {
    uint64_t avail = 0;
    const uint64_t off = map_vaddr(vaddr, avail, what);
    if (len > avail)
      invalid(std::string(what) + " (" + num(len) + " bytes at " + hex(vaddr) +
              ") runs past the end of its segment");
    return off;
  }

  // Without section headers: PT_DYNAMIC's DT_SYMTAB/DT_STRTAB/DT_STRSZ and
  // DT_HASH or DT_GNU_HASH for the symbol count.
  void from_dynamic(DynamicTables& t) {
    if (eh_.e_phoff == 0 || eh_.e_phnum == 0)
      invalid("no dynamic symbol table: no .dynsym section and no program headers");
    if (eh_.e_phentsize != sizeof(Elf64_Phdr))
      invalid("program header size e_phentsize " + num(eh_.e_phentsize) + ", expected " +
              num(sizeof(Elf64_Phdr)));
    if (eh_.e_phnum == PN_XNUM) invalid("extended program header numbering (PN_XNUM) is not supported");
    bool have_dynamic = false;
    Elf64_Phdr dynamic{};
    r_.for_each<Elf64_Phdr>(eh_.e_phoff, eh_.e_phnum, "program header table",
                            [&](uint64_t, const Elf64_Phdr& p) {
                              if (p.p_type == PT_LOAD) loads_.push_back(p);
                              if (p.p_type == PT_DYNAMIC && !have_dynamic) {
                                dynamic = p;
                                have_dynamic = true;
                              }
                              return true;
                            });
    if (!have_dynamic) invalid("no dynamic symbol table: no .dynsym section and no PT_DYNAMIC segment");
    if (!r_.contains(dynamic.p_offset, dynamic.p_filesz))
      invalid("PT_DYNAMIC (offset " + num(dynamic.p_offset) + ", " + num(dynamic.p_filesz) +
              " bytes) runs past the end of the file (" + num(r_.size()) + " bytes)");
    uint64_t symtab = 0, strtab = 0, strsz = 0, syment = 0, hash = 0, gnu_hash = 0;
    bool have_symtab = false, have_strtab = false, have_strsz = false, have_hash = false,
         have_gnu_hash = false;
    r_.for_each<Elf64_Dyn>(dynamic.p_offset, dynamic.p_filesz / sizeof(Elf64_Dyn), "PT_DYNAMIC",
                           [&](uint64_t, const Elf64_Dyn& d) {
                             const uint64_t v = d.d_un.d_val;
                             switch (d.d_tag) {
                               case DT_NULL: return false;
                               case DT_SYMTAB: symtab = v; have_symtab = true; break;
                               case DT_STRTAB: strtab = v; have_strtab = true; break;
                               case DT_STRSZ: strsz = v; have_strsz = true; break;
                               case DT_SYMENT: syment = v; break;
                               case DT_HASH: hash = v; have_hash = true; break;
                               case DT_GNU_HASH: gnu_hash = v; have_gnu_hash = true; break;
                               default: break;
                             }
                             return true;
                           });
    if (!have_symtab || !have_strtab || !have_strsz)
      invalid("PT_DYNAMIC lacks DT_SYMTAB, DT_STRTAB or DT_STRSZ: no dynamic symbol table");
    if (syment != 0 && syment != sizeof(Elf64_Sym))
      invalid("DT_SYMENT " + num(syment) + ", expected " + num(sizeof(Elf64_Sym)));
    uint64_t count = 0;
    if (have_hash) {
      const uint64_t off = to_offset(hash, 8, "DT_HASH");
      count = r_.read_one<uint32_t>(off + 4, "DT_HASH");  // nchain
    } else if (have_gnu_hash) {
      count = gnu_hash_count(gnu_hash);
    } else {
      invalid("PT_DYNAMIC has neither DT_HASH nor DT_GNU_HASH: the number of symbols is unknown");
    }
    if (count > r_.size() / sizeof(Elf64_Sym))
      invalid("DT_SYMTAB claims " + num(count) + " symbols, more than the file can hold");
    t.sym_off = to_offset(symtab, count * sizeof(Elf64_Sym), "DT_SYMTAB");
    t.sym_count = count;
    t.str_off = to_offset(strtab, strsz, "DT_STRTAB");
    t.str_size = strsz;
    t.source = "DT_SYMTAB";
  }

  // One more than the highest symbol index DT_GNU_HASH reaches.
  uint64_t gnu_hash_count(uint64_t vaddr) {
    uint64_t avail = 0;
    const uint64_t off = map_vaddr(vaddr, avail, "DT_GNU_HASH");
    if (avail < 16) invalid("DT_GNU_HASH header runs past the end of its segment");
    uint32_t h[4];  // nbuckets, symoffset, bloom_size (64-bit words), bloom_shift
    r_.read(off, h, sizeof h, "DT_GNU_HASH");
    const uint64_t nbuckets = h[0], symoffset = h[1], bloom = h[2];
    const uint64_t buckets_at = 16 + bloom * 8;
    if (buckets_at > avail || nbuckets > (avail - buckets_at) / 4)
      invalid("DT_GNU_HASH (" + num(nbuckets) + " buckets, " + num(bloom) +
              " bloom words) runs past the end of its segment");
    uint32_t max = 0;
    r_.for_each<uint32_t>(off + buckets_at, nbuckets, "DT_GNU_HASH buckets",
                          [&](uint64_t, uint32_t b) {
                            max = std::max(max, b);
                            return true;
                          });
    if (max == 0) return symoffset;  // no hashed symbols
    if (max < symoffset)
      invalid("DT_GNU_HASH bucket " + num(max) + " is below its symbol offset " + num(symoffset));
    // Walk the last chain to its end marker (bit 0 set), in bounded chunks.
    const uint64_t first = buckets_at + nbuckets * 4 + (uint64_t{max} - symoffset) * 4;
    if (first > avail) invalid("DT_GNU_HASH chain runs past the end of its segment");
    uint64_t count = 0;
    r_.for_each<uint32_t>(off + first, (avail - first) / 4, "DT_GNU_HASH chains",
                          [&](uint64_t i, uint32_t v) {
                            if (!(v & 1u)) return true;
                            count = uint64_t{max} + i + 1;
                            return false;
                          });
    if (count == 0) invalid("DT_GNU_HASH chain has no end marker in its segment");
    return count;
  }

  ElfSymbolCheck scan(const DynamicTables& t) {
    if (!r_.contains(t.str_off, t.str_size))
      invalid("the dynamic string table runs past the end of the file");
    std::string strtab(static_cast<size_t>(t.str_size), '\0');
    r_.read(t.str_off, strtab.data(), strtab.size(), "dynamic string table");
    if (!strtab.empty() && strtab.back() != '\0')
      invalid("the dynamic string table does not end with a NUL byte");
    ElfSymbolCheck out;
    out.status = ElfSymbolStatus::not_found;
    bool have_function = false, have_other = false;
    std::string other_type;
    r_.for_each<Elf64_Sym>(t.sym_off, t.sym_count, t.source, [&](uint64_t i, const Elf64_Sym& s) {
      if (s.st_name >= t.str_size) {
        if (s.st_name == 0 && t.str_size == 0) return true;
        invalid("symbol " + num(i) + "'s name (string index " + num(s.st_name) +
                ") is out of range of the dynamic string table (" + num(t.str_size) + " bytes)");
      }
      if (i == 0) return true;  // the null symbol
      const unsigned bind = ELF64_ST_BIND(s.st_info);
      const unsigned vis = ELF64_ST_VISIBILITY(s.st_other);
      const bool exported = (bind == STB_GLOBAL || bind == STB_WEAK) &&
                            (vis == STV_DEFAULT || vis == STV_PROTECTED) &&
                            s.st_shndx != SHN_UNDEF;
      if (!exported) return true;
      const char* name = strtab.data() + s.st_name;  // NUL-terminated: the table ends with one
      if (symbol_ == name) {
        const unsigned type = ELF64_ST_TYPE(s.st_info);
        if (type == STT_FUNC || type == STT_GNU_IFUNC) {
          have_function = true;
        } else if (!have_other) {
          have_other = true;
          other_type = type == STT_OBJECT    ? "STT_OBJECT (data)"
                       : type == STT_NOTYPE  ? "STT_NOTYPE"
                       : type == STT_TLS     ? "STT_TLS (thread-local data)"
                       : type == STT_COMMON  ? "STT_COMMON (data)"
                       : type == STT_SECTION ? "STT_SECTION"
                                             : "symbol type " + num(type);
        }
      } else if (!prefix_.empty() && out.same_prefix.empty() &&
                 std::strncmp(name, prefix_.c_str(), prefix_.size()) == 0 && printable(name)) {
        out.same_prefix = name;
      }
      return true;
    });
    if (have_function) return {ElfSymbolStatus::function, "", ""};
    if (have_other) return {ElfSymbolStatus::not_function, other_type, ""};
    return out;
  }

  Reader& r_;
  const std::string& symbol_;
  const std::string& prefix_;
  Elf64_Ehdr eh_{};
  std::vector<Elf64_Phdr> loads_;
};

ElfSymbolCheck run_guarded(Reader& r, const std::string& symbol, const std::string& prefix) {
  try {
    return Parser(r, symbol, prefix).run();
  } catch (const Invalid& e) {
    return {ElfSymbolStatus::invalid, e.reason, ""};
  }
}

}  // namespace

ElfSymbolCheck find_exported_function(const std::string& path, const std::string& symbol,
                                      const std::string& prefix) {
  try {
    FileReader r(path);
    return run_guarded(r, symbol, prefix);
  } catch (const Invalid& e) {
    return {ElfSymbolStatus::invalid, e.reason, ""};
  }
}

ElfSymbolCheck find_exported_function(const uint8_t* data, size_t size, const std::string& symbol,
                                      const std::string& prefix) {
  MemoryReader r(data, data ? size : 0);
  return run_guarded(r, symbol, prefix);
}

const char* to_string(ElfSymbolStatus status) {
  switch (status) {
    case ElfSymbolStatus::function: return "function";
    case ElfSymbolStatus::not_function: return "not a function";
    case ElfSymbolStatus::not_found: return "not found";
    case ElfSymbolStatus::invalid: return "invalid";
  }
  return "invalid";
}

}  // namespace qforge::host
