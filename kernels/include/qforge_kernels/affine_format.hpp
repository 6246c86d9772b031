// Affine grid formats as data (DESIGN.md, "Packed formats are data"), like
// ggml's type_traits: one row per packed format whose named tensors describe
//
//   W[o, i] = scale[g, o] · (q[o, i] − zero[g, o]),   g = the group of input i
//
// i.e. a QuantizedWeight (packed_matrix.hpp), whatever the layout, dtypes and
// g_idx. The format itself is written down once, in its SDK header
// (sdk/include/qforge/formats/<name>.h); its row says how to read it: the
// tensors with their dtypes and shapes, the metadata, and describe(), which
// turns checked tensors into a QuantizedWeight. The table-driven inference
// layer (plugins/affine) and unpack_affine() (affine_aten.hpp) serve every row.
//
// Adding a format (e.g. compressed-tensors pack-quantized): its SDK header
// (sdk/include/qforge/formats/<name>.h); its row, `extern const AffineFormat
// <name>` in kernels/src/formats/formats.hpp, defined in
// kernels/src/formats/<name>.cpp (see gptq_v1.cpp: tensor specs,
// read_metadata, describe) and listed in kernels/CMakeLists.txt; its address
// in kAffineFormats (kernels/src/affine_format.cpp); a case in
// kernels/test/affine_format_test.cpp.
//
// No LibTorch here: tensors are plain CPU buffers (TensorData). Errors are
// qforge::Error(INVALID_ARGUMENT) with messages that start with the format id.
#pragma once

#include <qforge/dlpack.h>
#include <qforge_kernels/hadamard.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace qforge::kernels {

// A randomized Hadamard transform a format states (hadamard.hpp).
struct TransformShape {
  int64_t pow2 = 0, base = 0;  // size = pow2 · base; pow2 0: no transform
  bool stored_base = false;    // the base is a tensor, not the built-in Hadamard matrix
  bool random_base = false;    // the base is random_orthogonal(base, seed)
  uint64_t seed = 0;
};

// The matrix as a format's metadata states it; the shapes of its tensors
// follow from it.
struct AffineShape {
  int bits = 0;
  int64_t in_features = 0, out_features = 0;
  int64_t group_size = 0;  // input columns per group (in_features: one group per row)
  int64_t groups = 0;      // ceil(in_features / group_size)
  TransformShape input, output;  // formats with transforms only (V, U)
};

// Sizes and group_size are in [1, kMaxAffineDim].
inline constexpr int64_t kMaxAffineDim = 2147483647;  // 2^31 - 1

// The shape a metadata object states with the integers at keys `bits` (in
// [2, 8]), `group_size`, `in_features` and `out_features` (in [1,
// kMaxAffineDim]); groups = ceil(in_features / group_size).
AffineShape read_affine_shape(const nlohmann::json& m, const char* format, const char* bits,
                              const char* group_size, const char* in_features,
                              const char* out_features);

// A tensor handed to a format: dense row-major data on the CPU. Untrusted
// until checked against its TensorSpec.
struct TensorData {
  DLDataType dtype{};
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// One tensor a format names.
struct TensorSpec {
  const char* name;                                   // from the format's SDK header
  std::vector<DLDataType> dtypes;                     // the accepted ones
  std::vector<int64_t> (*shape)(const AffineShape&);  // the one accepted shape
  bool required;
};

// What a format's tensors say: `weight` points into them and into the float32
// conversions kept here. Movable, not copyable.
struct AffineWeight {
  AffineShape shape;
  QuantizedWeight weight;
  std::vector<float> bias;           // float32 [out]; empty without a bias
  std::vector<float> scales, zeros;  // conversions `weight` may point into
  // Formats with transforms (QuIP): the layer computes
  //   y = Uᵀ · (Q̂ · (V · (x ⊘ rescale))) (+ bias),  Q̂ = `weight`.
  std::vector<float> rescale;                                      // [in], or empty
  std::shared_ptr<const RandomizedHadamard> input_transform;       // V, or null
  std::shared_ptr<const RandomizedHadamard> output_transform;      // U, or null
  bool transformed() const { return !rescale.empty() || input_transform || output_transform; }

  AffineWeight() = default;
  AffineWeight(AffineWeight&&) = default;
  AffineWeight& operator=(AffineWeight&&) = default;
  AffineWeight(const AffineWeight&) = delete;
  AffineWeight& operator=(const AffineWeight&) = delete;
};

// A row of the table.
struct AffineFormat {
  const char* id;                   // e.g. QFORGE_FORMAT_GPTQ_V1
  std::vector<TensorSpec> tensors;  // every tensor the format may hold
  // Reads and checks the metadata object.
  AffineShape (*read_metadata)(const nlohmann::json& metadata);
  // The weight that `tensors` (checked: tensors[k] matches this->tensors[k];
  // nullptr for an optional tensor that is absent) describe; checks the
  // values a QuantizedWeight can't hold (e.g. a zero point above maxq).
  AffineWeight (*describe)(const AffineShape& shape, const std::vector<const TensorData*>& tensors);
  // The weight is Q̂ between transforms (AffineWeight::transformed()): a
  // plain affine grid writer (GPTQ, compressed-tensors) cannot store it.
  bool transformed = false;
  // Tuning (qforge.layer.tunable revision 2): rounds scales and zero points
  // (float32 [groups][out], in place) to what the format stores, given its
  // (checked) tensors, whose dtypes may decide (e.g. uint8 or float16 zero
  // points); then writes rounded ones into the tensors that hold them, which
  // are the caller's own copies (spec order; the data may be written).
  void (*round_params)(const AffineShape& shape, const std::vector<const TensorData*>& tensors,
                       float* scales, float* zeros) = nullptr;
  void (*write_params)(const AffineShape& shape, const float* scales, const float* zeros,
                       const std::vector<const TensorData*>& tensors) = nullptr;
};

// Every row, in the table's order.
const std::vector<const AffineFormat*>& affine_formats();
// The row of format `id`, or nullptr.
const AffineFormat* find_affine_format(const char* id);
// The ids of every row, NULL-terminated (an inference layer's `formats`).
const char* const* affine_format_ids();

// Parses `metadata_json` with format.read_metadata, checks the named tensors
// against format.tensors (each name known and given once, the required ones
// present, dtype and shape) and describes them.
AffineWeight describe_affine(const AffineFormat& format, const std::string& metadata_json,
                             const std::vector<std::pair<std::string, TensorData>>& tensors);

// Helpers shared with the other format tables (sign_format.hpp).

// The metadata object, or an error naming format `id`.
nlohmann::json parse_metadata(const std::string& id, const std::string& metadata_json);
// A tensor a format names, with the one shape its metadata implies.
struct TensorCheck {
  const char* name;
  std::vector<DLDataType> dtypes;  // the accepted ones
  std::vector<int64_t> shape;
  bool required;
  std::string why;  // appended to a shape error, e.g. " (k = 37)"
};
// The tensor of each check, in the checks' order (nullptr for an optional one
// that is absent), after checking every name known and given once, the
// required ones present, dtype, shape and data.
std::vector<const TensorData*> match_tensors(
    const std::string& id, const std::vector<TensorCheck>& checks,
    const std::vector<std::pair<std::string, TensorData>>& tensors);

// The codes of output o, q[o, 0..in), from w's bit streams.
void read_codes(const QuantizedWeight& w, int64_t o, uint8_t* codes);

// The scalar reference decoding: dst[o * in + i] = W[o, i], computed as
// scale * (q - zero) in float32 from the codes bit by bit.
void dequantize_reference(const QuantizedWeight& w, float* dst);

// Helpers for the rows.

// Integer `key` of a (untrusted) metadata object, in [lo, hi].
int64_t meta_int(const nlohmann::json& m, const char* format, const char* key, int64_t lo,
                 int64_t hi);
// Checks that `key` is a boolean when present (or, `required`, that it is one).
void meta_bool(const nlohmann::json& m, const char* format, const char* key, bool required);
// float32 values of a float32, float16 or bfloat16 tensor.
std::vector<float> to_float(const TensorData& t);
// Round to nearest even into float16 / bfloat16 bits (finite inputs), and
// the float32 value a tensor of `dtype` (float32, float16, bfloat16) stores
// for f.
uint16_t float_to_half(float f);
uint16_t float_to_bfloat(float f);
float stored_as(float f, DLDataType dtype);
// Writes `values` (float32) into t's data in t's floating dtype.
void store_floats(const TensorData& t, const float* values, int64_t n);
// Each zero point rounded to an integer and clamped to [lo, hi].
void round_zeros(float* zeros, int64_t n, float lo, float hi);

}  // namespace qforge::kernels
