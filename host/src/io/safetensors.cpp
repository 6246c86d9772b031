// Safetensors: mapped reader, model-directory store, atomic writer.
// Header validation lives in safetensors_header.cpp (no ATen there).
#include "qforge_host/io/safetensors.hpp"

#include "qforge_host/base/atomic_file.hpp"
#include "qforge_host/base/text.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors stores little-endian data; this reader maps it as is");

namespace qforge::host {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

// ---------------------------------------------------------------------------
// dtypes

at::ScalarType to_scalar_type(StDtype dtype) {
  switch (dtype) {
    case StDtype::F64: return at::kDouble;
    case StDtype::F32: return at::kFloat;
    case StDtype::F16: return at::kHalf;
    case StDtype::BF16: return at::kBFloat16;
    case StDtype::I64: return at::kLong;
    case StDtype::I32: return at::kInt;
    case StDtype::I16: return at::kShort;
    case StDtype::I8: return at::kChar;
    case StDtype::U8: return at::kByte;
    case StDtype::BOOL: return at::kBool;
    case StDtype::F8_E4M3: return at::kByte;
  }
  throw ModelFileError("unknown safetensors dtype");
}

StDtype to_st_dtype(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble: return StDtype::F64;
    case at::kFloat: return StDtype::F32;
    case at::kHalf: return StDtype::F16;
    case at::kBFloat16: return StDtype::BF16;
    case at::kLong: return StDtype::I64;
    case at::kInt: return StDtype::I32;
    case at::kShort: return StDtype::I16;
    case at::kChar: return StDtype::I8;
    case at::kByte: return StDtype::U8;
    case at::kBool: return StDtype::BOOL;
    default:
      throw ModelFileError(std::string("dtype ") + c10::toString(dtype) +
                           " cannot be stored in a safetensors file (supported: F64, F32, F16, "
                           "BF16, I64, I32, I16, I8, U8, BOOL; F8_E4M3 as marked uint8)");
  }
}

namespace {

// The deleter of a marked tensor's memory (the mark: as_f8_e4m3); its
// context is the storage whose memory it shares.
void release_f8_e4m3(void* storage) { delete static_cast<c10::Storage*>(storage); }

}  // namespace

at::Tensor as_f8_e4m3(const at::Tensor& bytes) {
  if (!bytes.defined() || bytes.scalar_type() != at::kByte || !bytes.device().is_cpu() ||
      bytes.layout() != at::kStrided)
    throw std::invalid_argument("as_f8_e4m3: expects a uint8 CPU tensor");
  if (is_f8_e4m3(bytes) && bytes.is_contiguous()) return bytes;
  const at::Tensor c = bytes.contiguous();
  c10::DataPtr data(c.data_ptr(), new c10::Storage(c.storage()), &release_f8_e4m3, c.device());
  c10::Storage marked(c10::Storage::use_byte_size_t(), static_cast<size_t>(c.numel()), std::move(data));
  return at::empty({0}, c.options()).set_(marked, 0, c.sizes(), c.strides());
}

bool is_f8_e4m3(const at::Tensor& t) {
  return t.defined() && t.scalar_type() == at::kByte && t.has_storage() &&
         t.storage().data_ptr().get_deleter() == &release_f8_e4m3;
}

StDtype st_dtype_of(const at::Tensor& t) {
  return is_f8_e4m3(t) ? StDtype::F8_E4M3 : to_st_dtype(t.scalar_type());
}

// ---------------------------------------------------------------------------
// SafetensorsFile

struct SafetensorsFile::Mapping {
  const uint8_t* base = nullptr;
  std::size_t size = 0;
  ~Mapping() {
    if (base) ::munmap(const_cast<uint8_t*>(base), size);
  }
};

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  // O_NONBLOCK: opening a FIFO without a writer must not hang (refused below).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw ModelFileError(path + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw ModelFileError(path + ": cannot stat: " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw ModelFileError(path + ": not a regular file");
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  auto map = std::make_shared<Mapping>();
  if (size < 8) {  // too short to map usefully; the parser explains
    ::close(fd);
    uint8_t none[8] = {};
    header_ = parse_safetensors_header(none, size, path);  // throws
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file
  if (addr == MAP_FAILED) throw ModelFileError(path + ": cannot map " + std::to_string(size) +
                                               " bytes: " + errno_text(err));
  map->base = static_cast<const uint8_t*>(addr);
  map->size = size;
  header_ = parse_safetensors_header(map->base, size, path);
  map_ = std::move(map);
}

SafetensorsFile::~SafetensorsFile() = default;

const std::string& SafetensorsFile::path() const { return path_; }
const std::map<std::string, TensorInfo>& SafetensorsFile::tensors() const { return header_.tensors; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return header_.metadata; }
bool SafetensorsFile::contains(const std::string& name) const { return header_.tensors.count(name) != 0; }

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  const auto it = header_.tensors.find(name);
  if (it == header_.tensors.end()) throw ModelFileError(path_ + ": no tensor named " + quote(name));
  return it->second;
}

at::Tensor SafetensorsFile::view(const std::string& name) const {
  const TensorInfo& t = info(name);
  const at::ScalarType type = to_scalar_type(t.dtype);
  const auto options = at::TensorOptions().dtype(type).device(at::kCPU);
  const auto typed = [&](const at::Tensor& v) { return t.dtype == StDtype::F8_E4M3 ? as_f8_e4m3(v) : v; };
  if (t.end == t.begin) return typed(at::empty(t.shape, options));
  const uint8_t* p = map_->base + header_.data_offset + t.begin;
  const std::size_t bytes = t.end - t.begin;
  if (t.dtype == StDtype::BOOL) {
    for (std::size_t i = 0; i < bytes; ++i)
      if (p[i] > 1)
        throw ModelFileError(path_ + ": tensor " + quote(name) + ": BOOL element " + std::to_string(i) +
                             " is stored as " + std::to_string(p[i]) + ", not 0 or 1");
  }
  if (reinterpret_cast<std::uintptr_t>(p) % st_dtype_size(t.dtype) != 0) {
    at::Tensor copy = at::empty(t.shape, options);
    std::memcpy(copy.data_ptr(), p, bytes);
    return typed(copy);
  }
  std::shared_ptr<const Mapping> keep = map_;
  return typed(at::from_blob(const_cast<uint8_t*>(p), t.shape, [keep](void*) {}, options));
}

at::Tensor SafetensorsFile::load(const std::string& name, at::ScalarType dtype) const {
  const TensorInfo& t = info(name);
  if (t.end > t.begin) {  // a hint to read the pages ahead; harmless if ignored
    const long page = ::sysconf(_SC_PAGESIZE);
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(map_->base + header_.data_offset + t.begin);
    const std::uintptr_t start = first - first % static_cast<std::uintptr_t>(page);
    ::madvise(reinterpret_cast<void*>(start), first - start + (t.end - t.begin), MADV_WILLNEED);
  }
  at::Tensor stored = view(name);
  // Integers read as floats would run as weights without a word (an I32
  // "weight" evaluated to a plausible perplexity): refuse.
  if (at::isFloatingType(dtype) && !at::isFloatingType(stored.scalar_type()))
    throw ModelFileError(path_ + ": tensor " + quote(name) + " is stored as " +
                         (t.dtype == StDtype::F8_E4M3 ? "F8_E4M3, which is not decoded here"
                                                      : c10::toString(stored.scalar_type())) +
                         "; a floating-point tensor is expected");
  at::Tensor out = at::empty(t.shape, at::TensorOptions().dtype(dtype).device(at::kCPU));
  out.copy_(stored);
  if (t.end > t.begin) {
    // The copy is independent of the mapping: hand its pages back so that
    // streaming a model block by block keeps only one block resident. (A
    // private read-only mapping refaults them from the file if read again.)
    const long page = ::sysconf(_SC_PAGESIZE);
    const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(map_->base + header_.data_offset + t.begin);
    const std::uintptr_t start = first - first % static_cast<std::uintptr_t>(page);
    ::madvise(reinterpret_cast<void*>(start), first - start + (t.end - t.begin), MADV_DONTNEED);
  }
  return out;
}

// ---------------------------------------------------------------------------
// TensorStore

namespace {

}  // namespace

TensorStore::TensorStore(const std::string& dir) : dir_(dir) {
  std::error_code ec;
  const fs::file_status st = fs::status(dir, ec);
  if (ec || !fs::exists(st)) throw ModelFileError(dir + ": no such file or directory");

  if (fs::is_regular_file(st)) {  // a single .safetensors file named directly
    files_.push_back(std::make_unique<SafetensorsFile>(dir));
  } else if (!fs::is_directory(st)) {
    throw ModelFileError(dir + ": neither a directory nor a file");
  } else {
    const fs::path root(dir);
    const fs::path single = root / "model.safetensors";
    const fs::path index = root / "model.safetensors.index.json";
    if (fs::exists(single, ec)) {
      files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
    } else if (fs::exists(index, ec)) {
      const std::string index_path = index.string();
      const auto weight_map = parse_safetensors_index(read_file(index_path, "index file", kMaxIndexFileBytes), index_path);
      if (weight_map.empty()) throw ModelFileError(index_path + ": \"weight_map\" is empty");
      std::map<std::string, std::vector<std::string>> by_shard;
      for (const auto& [tensor, shard] : weight_map) by_shard[shard].push_back(tensor);
      for (const auto& [shard, names] : by_shard) {
        const fs::path shard_path = root / shard;
        const fs::file_status sst = fs::status(shard_path, ec);
        if (ec || !fs::exists(sst))
          throw ModelFileError(index_path + ": tensor " + quote(names.front()) + ": shard file " +
                               quote(shard) + " does not exist in " + dir);
        if (!fs::is_regular_file(sst))
          throw ModelFileError(index_path + ": tensor " + quote(names.front()) + ": shard " +
                               quote(shard) + " is not a regular file");
        auto file = std::make_unique<SafetensorsFile>(shard_path.string());
        for (const std::string& name : names) {
          if (!file->contains(name))
            throw ModelFileError(index_path + ": tensor " + quote(name) + " is mapped to shard " +
                                 quote(shard) + ", which does not contain it");
          where_.emplace(name, file.get());
        }
        files_.push_back(std::move(file));
      }
      return;
    } else {
      throw ModelFileError(dir + ": no model.safetensors or model.safetensors.index.json");
    }
  }
  for (const auto& [name, info] : files_.front()->tensors()) where_.emplace(name, files_.front().get());
}

TensorStore::~TensorStore() = default;
TensorStore::TensorStore(TensorStore&&) noexcept = default;
TensorStore& TensorStore::operator=(TensorStore&&) noexcept = default;

bool TensorStore::contains(const std::string& name) const { return where_.count(name) != 0; }

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, file] : where_) out.push_back(name);
  return out;
}

const SafetensorsFile& TensorStore::file_of(const std::string& name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) throw ModelFileError(dir_ + ": the model has no tensor named " + quote(name));
  return *it->second;
}

const TensorInfo& TensorStore::info(const std::string& name) const { return file_of(name).info(name); }
at::Tensor TensorStore::load(const std::string& name, at::ScalarType dtype) const {
  return file_of(name).load(name, dtype);
}
at::Tensor TensorStore::view(const std::string& name) const { return file_of(name).view(name); }

uint64_t TensorStore::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : where_) {
    const TensorInfo& t = file->info(name);
    total += t.end - t.begin;
  }
  return total;
}

std::vector<const SafetensorsFile*> TensorStore::files() const {
  std::vector<const SafetensorsFile*> out;
  for (const auto& f : files_) out.push_back(f.get());
  return out;
}

// ---------------------------------------------------------------------------
// Writer


void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything is checked before a byte is written. The header text is
  // assembled entry by entry (in the order given; linear in the count).
  using json = nlohmann::json;
  auto dump = [&](const json& j) {
    try {
      return j.dump(-1, ' ', false, json::error_handler_t::strict);
    } catch (const std::exception&) {
      throw ModelFileError(path + ": a tensor name or metadata string is not valid UTF-8");
    }
  };
  std::string text = "{";
  if (!metadata.empty()) text += "\"__metadata__\":" + dump(json(metadata));
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    const std::string where = path + ": tensor " + quote(name) + ": ";
    if (name.empty()) throw ModelFileError(path + ": a tensor has an empty name");
    if (name == "__metadata__") throw ModelFileError(where + "the name is reserved");
    if (!seen.insert(name).second) throw ModelFileError(where + "given twice");
    if (!t.defined()) throw ModelFileError(where + "undefined tensor");
    if (t.layout() != at::kStrided) throw ModelFileError(where + "only dense (strided) tensors can be stored");
    StDtype dtype;
    try {
      dtype = st_dtype_of(t);
    } catch (const ModelFileError& e) {
      throw ModelFileError(where + e.what());
    }
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * st_dtype_size(dtype);
    json shape = json::array();
    for (int64_t d : t.sizes()) shape.push_back(d);
    if (text.size() > 1) text += ',';
    text += dump(json(name)) + ":{\"dtype\":\"" + st_dtype_name(dtype) + "\",\"shape\":" + shape.dump() +
            ",\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + bytes) + "]}";
    offset += bytes;
  }
  text += '}';
  text.append((8 - text.size() % 8) % 8, ' ');
  if (text.size() > kMaxSafetensorsHeaderBytes)
    throw ModelFileError(path + ": the header would be " + std::to_string(text.size()) +
                         " bytes, more than readers accept");

  AtomicFile out(path);
  uint8_t prefix[8];
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
  out.write(prefix, sizeof prefix);
  out.write(text.data(), text.size());
  for (const auto& [name, t] : tensors) {
    if (t.numel() == 0) continue;
    const at::Tensor c = t.to(at::kCPU).resolve_conj().resolve_neg().contiguous();
    out.write(c.data_ptr(), static_cast<std::size_t>(c.numel()) * c.element_size());
  }
  out.commit();
}

}  // namespace qforge::host
