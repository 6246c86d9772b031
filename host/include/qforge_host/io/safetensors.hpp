// Safetensors model files: memory-mapped, read lazily, every header field
// checked against the file before use (safetensors_header.hpp lists the
// checks); and an atomic writer.
//
// Reading: a file is mapped read-only (mmap PROT_READ, MAP_PRIVATE) and its
// header validated when it is opened; tensor bytes are touched only when a
// tensor is viewed or loaded, so opening a 140 GB model costs its headers.
// The mapping is reference-counted: a view keeps it alive, so views stay
// valid even after their SafetensorsFile is gone.
//
// Caveats of mapping: writing through a view faults (the pages are
// read-only); a file truncated by another process *after* it was opened makes
// a later read raise SIGBUS (save_safetensors never does that: it renames a
// new file over the old name, and existing mappings keep the old inode).
// Little-endian hosts only (as the format).
//
// Thread safety: all const member functions may be called concurrently.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qforge_host/io/safetensors_header.hpp"  // ModelFileError, StDtype, TensorInfo

namespace qforge::host {

// The ATen dtype a safetensors dtype is stored as (F16 -> kHalf, U8 -> kByte,
// I8 -> kChar, F8_E4M3 -> kByte, ...), and back (throws ModelFileError for
// dtypes safetensors files written here cannot hold, e.g. complex; kByte is U8).
at::ScalarType to_scalar_type(StDtype dtype);
StDtype to_st_dtype(at::ScalarType dtype);

// F8_E4M3 has no ATen dtype in this LibTorch: such a tensor is held as its
// bytes, a uint8 tensor marked as F8_E4M3. The mark is carried by the memory:
// views of a marked tensor (slices, .contiguous() of a contiguous one) are
// marked too; anything computed from it (a copy, .clone(), arithmetic) is
// plain uint8. SafetensorsFile::view marks the F8_E4M3 tensors it returns and
// save_safetensors stores marked tensors as F8_E4M3, so F8_E4M3 tensors read
// and written back keep their dtype.
//
// as_f8_e4m3: `bytes` (uint8, CPU) marked, sharing its memory (a contiguous
// copy's if it is not contiguous); std::invalid_argument for another dtype.
at::Tensor as_f8_e4m3(const at::Tensor& bytes);
bool is_f8_e4m3(const at::Tensor& t);
// The dtype save_safetensors stores `t` as: F8_E4M3 when marked, else
// to_st_dtype(t.scalar_type()).
StDtype st_dtype_of(const at::Tensor& t);

// One .safetensors file, memory-mapped read-only, header validated on open.
class SafetensorsFile {
 public:
  // Throws ModelFileError naming the file when it cannot be opened, is not a
  // regular file, or fails any header check.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();  // drops this object's reference to the mapping (munmap with the last view)
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const;
  const std::map<std::string, TensorInfo>& tensors() const;
  const std::map<std::string, std::string>& metadata() const;  // "__metadata__"
  bool contains(const std::string& name) const;
  // Throws ModelFileError naming the file and the tensor if absent.
  const TensorInfo& info(const std::string& name) const;

  // Zero-copy view of the stored bytes with the stored dtype and shape (CPU,
  // contiguous, read-only memory: never write to it). Valid as long as it
  // lives (it holds the mapping). Two exceptions make a copy instead: a
  // tensor whose bytes are not aligned to its element size (possible only in
  // files whose writer did not pad the header; aligned access is what ATen
  // kernels assume) and a zero-size tensor. BOOL bytes are checked to be 0
  // or 1 (anything else throws ModelFileError). F8_E4M3 tensors come as
  // uint8 marked F8_E4M3 (as_f8_e4m3).
  at::Tensor view(const std::string& name) const;
  // A copy converted to `dtype` (e.g. at::kFloat; always a fresh tensor,
  // even when `dtype` is the stored one); reads only that tensor's pages.
  // F8_E4M3 is not decoded: it loads as its bytes (kByte, unmarked) only.
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;

 private:
  struct Mapping;
  std::string path_;
  std::shared_ptr<const Mapping> map_;
  SafetensorsHeader header_;
};

// A model directory: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` ("weight_map": tensor name -> shard file).
// `dir` may also name a single .safetensors file.
//
// Every shard is opened (mapped, header validated) in the constructor: a bad
// or missing shard is reported before any long job starts, and the object has
// no lazily mutated state, so it is safe to share across threads. Mapping
// costs address space and the headers' pages only; no descriptor is kept
// open. Checked: the index is a JSON object with a "weight_map" object; each
// shard name is relative with no ".." component, exists and is a valid
// safetensors file; each mapped tensor is present in its shard. Tensors a
// shard holds but the index does not map are not part of the store (as in
// transformers). When both model.safetensors and the index exist, the single
// file wins (as in transformers).
class TensorStore {
 public:
  explicit TensorStore(const std::string& dir);
  ~TensorStore();
  TensorStore(TensorStore&&) noexcept;
  TensorStore& operator=(TensorStore&&) noexcept;

  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  // Throws ModelFileError naming the tensor (and the directory) if absent.
  const TensorInfo& info(const std::string& name) const;
  // A fresh copy converted to `dtype`; see SafetensorsFile::load.
  at::Tensor load(const std::string& name, at::ScalarType dtype) const;
  // Zero-copy view; see SafetensorsFile::view.
  at::Tensor view(const std::string& name) const;
  uint64_t total_bytes() const;  // sum of stored tensor bytes
  const std::string& dir() const { return dir_; }
  // The open files (one, or one per shard), in shard-name order.
  std::vector<const SafetensorsFile*> files() const;

 private:
  const SafetensorsFile& file_of(const std::string& name) const;
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> where_;  // tensor -> its file
};

// Writes `tensors` (contiguous CPU copies made as needed; dtypes F64, F32,
// F16, BF16, I64, I32, I16, I8, U8, BOOL, and F8_E4M3 for tensors marked by
// as_f8_e4m3) and `metadata` as a safetensors file, atomically: to
// "<path>.tmp-<pid>", fsync, rename over `path`, fsync of the directory; on
// any failure the temporary file is removed and `path` is left as it was.
// An interrupted process can leave a ".tmp-<pid>" file
// behind, never a complete-looking file at `path`. The header lists tensors
// in the order given and is padded with spaces to a multiple of 8 bytes, so
// every tensor starts 8-byte aligned; tensor data follow in the order given,
// back to back. Throws ModelFileError naming the file (and the tensor) for
// an empty or duplicate name, "__metadata__" as a name, an unsupported dtype,
// an undefined tensor, or an I/O error.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace qforge::host
