// The safetensors header parser, with no LibTorch dependency (so that the
// fuzz target, tests/fuzz/, builds without it), and the model-directory index
// parser. Everything that reads a model file goes through these checks before
// touching a byte of tensor data; see safetensors.hpp for the mapped reader.
//
// File layout (https://github.com/huggingface/safetensors, format section):
//   u64 little-endian N | N bytes of UTF-8 JSON header | data area
// The header is a JSON object: tensor name -> {"dtype", "shape",
// "data_offsets": [begin, end]} with offsets relative to the data area, plus
// an optional "__metadata__" string -> string object.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qforge_host/base/errors.hpp"

namespace qforge::host {

// F8_E4M3: OCP FP8 E4M3FN, one byte per element (compressed-tensors' FP8
// weights); LibTorch 1.13 has no such dtype, see safetensors.hpp.
enum class StDtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3 };

// "F32", "BF16", ... as spelled in safetensors headers.
const char* st_dtype_name(StDtype dtype);
// Bytes per element: 8, 4, 2, 2, 8, 4, 2, 1, 1, 1, 1.
std::size_t st_dtype_size(StDtype dtype);
// The dtype for a header spelling; nullopt for anything else (case-sensitive,
// like the reference implementation).
std::optional<StDtype> st_dtype_from_name(const std::string& name);

struct TensorInfo {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data area
  std::string file;             // the file it is stored in
};

// Limits of the reader (beyond them a file is refused with a clear message).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;  // as the reference
inline constexpr std::size_t kMaxTensorRank = 64;
inline constexpr uint64_t kMaxIndexFileBytes = 100'000'000;

struct SafetensorsHeader {
  std::map<std::string, TensorInfo> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t header_bytes = 0;  // N
  uint64_t data_offset = 0;   // 8 + N: where the data area starts in the file
  uint64_t data_bytes = 0;    // size - 8 - N
};

// Validates the prefix and header of a safetensors file held in
// [data, data + size) (`size` is the size of the whole file; only the first
// 8 + N bytes are read) and returns its tensors, each with `file` = `name`.
// Throws ModelFileError, its message starting with `name` (and naming the
// tensor where one is involved), for: a file shorter than 8 bytes; N zero,
// above kMaxSafetensorsHeaderBytes or beyond the file; a header that is not
// valid UTF-8 JSON or not an object, or nests deeper than any valid header;
// duplicate keys; "__metadata__" not a string -> string object; an empty
// tensor name; an entry that is not an object; a missing, non-string or
// unknown dtype; a shape that is not an array of at most kMaxTensorRank
// non-negative integers; data_offsets that are not two non-negative integers
// with begin <= end; an element count x item size that overflows or differs
// from end - begin; end beyond the data area; two non-empty spans that
// overlap. Zero-size tensors are allowed; so are gaps between spans and
// unknown fields in an entry (ignored, as the reference reader does).
// Never reads outside the buffer; memory use is bounded by a small multiple
// of N.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, std::size_t size,
                                           const std::string& name);

// Parses the text of a `model.safetensors.index.json` and returns its
// "weight_map" (tensor name -> shard file name, relative to the directory).
// Throws ModelFileError naming `name` (and the tensor) when the text is not a
// JSON object, is larger than kMaxIndexFileBytes or nests too deep, has no
// "weight_map" object, maps a tensor to something other than a non-empty
// string, or names a shard that is an absolute path, has a ".." component or
// contains a NUL byte (so that the name cannot leave the directory).
// Symbolic links inside the directory are followed later, on purpose: the
// Hugging Face cache links every snapshot file to a blob outside it.
std::map<std::string, std::string> parse_safetensors_index(const std::string& text,
                                                           const std::string& name);

}  // namespace qforge::host
