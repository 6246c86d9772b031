// compressed-tensors codec: turns a quantized linear into the tensors and
// quantization_config that llm-compressor writes (and vLLM / transformers
// load), and reads them back, for two layouts:
//   * `pack-quantized` (affine grid results, weight-only INT 2..8 bits),
//     written down in <qforge/formats/ct_pack_quantized_v1.h>;
//   * the naive layout, stored unpacked, one 8-bit code per weight, under
//     three names (`int-quantized`, `float-quantized`, `naive-quantized`),
//     written down in <qforge/formats/ct_naive_quantized_v1.h>.
// The config follows compressed-tensors QuantizationArgs/QuantizationScheme
// as of QFORGE_CT_WRITER_VERSION (see ../shared/research/llm-compressor.md
// §2-§5).
//
// Packing of 3/5/6/7-bit codes is the dense one of compressed-tensors >= 0.17
// (one LSB-first bit stream per row, codes straddling words, as
// qforge_kernels/bitpack.hpp); the config's "version" says so, and
// parse_scheme refuses such widths from a config whose version is older or
// missing. 2/4/8-bit files are the same bytes in every version.
//
// Every error is a qforge::host::UsageError with a one-line message; the
// reader's messages name the tensor or config key at fault (callers prefix
// the linear's name).
#pragma once

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace qforge::host::ct {

// A linear quantized on an affine grid, in qforge's neutral form:
//   W[o, i] = scales[g, o] * (codes[o, i] - zeros[g, o]),  g = g_idx[i]
struct AffineLinear {
  int bits = 4;                   // 2..8
  int64_t out_features = 0, in_features = 0;
  at::Tensor codes;               // int32 [out, in], values in [0, 2^bits)
  at::Tensor scales;              // float32 [groups, out]
  at::Tensor zeros;               // float32 [groups, out] (integers when expressible)
  at::Tensor g_idx;               // int32 [in], group of each input column
  int64_t group_size = -1;        // nominal group size (-1 or >= in_features: per-channel)
  bool symmetric = true;          // the producer's claim (zeros all == 2^(bits-1))
  bool act_order = false;         // the producer's claim
};

// A config group's compression format ("format").
enum class Format { pack_quantized, int_quantized, float_quantized, naive_quantized };
const char* format_name(Format f);  // "pack-quantized", ...
// QuantizationArgs "type".
enum class Type { integer, floating };
// QuantizationArgs "strategy": weights group/channel (pack-quantized) or
// channel/tensor (naive); input activations token (dynamic) or tensor (static).
enum class Strategy { channel, group, tensor, token };
// none: natural order (null); weight: columns processed in activation order,
// natural groups ("static"/"weight", nothing stored); group: g_idx stored.
enum class ActOrder { none, weight, group };

// input_activations as qforge runs them: 8 bits, symmetric, the weights'
// type; strategy token (dynamic, nothing stored) or tensor (static,
// input_scale stored).
struct InputArgs {
  Type type = Type::integer;
  Strategy strategy = Strategy::token;
};
bool operator==(const InputArgs& a, const InputArgs& b);

// The part of compressed-tensors' QuantizationScheme a linear qforge writes
// or reads needs: the format and the weights' QuantizationArgs, plus the
// input activations' for the naive formats. pack-quantized: integer, 2..8
// bits, group or channel, no input activations. Naive formats: 8 bits,
// symmetric, channel or tensor (group_size -1), no actorder.
struct Scheme {
  Format format = Format::pack_quantized;
  Type type = Type::integer;
  int num_bits = 4;
  bool symmetric = true;
  Strategy strategy = Strategy::group;
  int64_t group_size = 128;       // > 0 for group, -1 otherwise
  ActOrder actorder = ActOrder::none;
  std::optional<InputArgs> input;  // input_activations (naive formats only)
};
bool operator==(const Scheme& a, const Scheme& b);
inline bool operator!=(const Scheme& a, const Scheme& b) { return !(a == b); }
// "W4 g128 sym actorder=static", "int-quantized W8 int channel, A8 int token", for messages.
std::string describe(const Scheme& s);

// The scheme that stores `linear`, or UsageError when compressed-tensors
// can't express it (bits, shapes, non-integer or out-of-range zeros, a
// symmetric claim with other zeros, g_idx that is neither j / group_size nor
// a relabelling of contiguous groups, act_order false with a shuffled g_idx).
// actorder: group when g_idx is not j / group_size; weight ("static", what
// llm-compressor's GPTQ writes) when act_order is claimed and groups are
// natural; none otherwise, and always none for channel (compressed-tensors
// rejects actorder without strategy group).
Scheme scheme_of(const AffineLinear& linear);

// The tensors of `linear` named "<prefix>.weight_packed", ... (the table of
// ct_pack_quantized_v1.h), in that order: weight_packed, weight_scale,
// weight_shape, then weight_zero_point (asymmetric only), weight_g_idx
// (actorder group only). scale_dtype: float16, bfloat16 or float32; a scale
// that overflows it or underflows to 0 is refused.
std::vector<std::pair<std::string, at::Tensor>> pack(const std::string& prefix,
                                                     const AffineLinear& linear,
                                                     at::ScalarType scale_dtype = at::kHalf);

// The reverse of pack for one linear: `tensors` are keyed by the suffixes
// ("weight_packed", ...); other keys (bias, ...) are ignored. Every tensor is
// checked (presence, dtype, shape, values) since checkpoints are untrusted.
// The result has float32 scales/zeros [groups, out], int32 codes and g_idx,
// group_size -1 for channel.
AffineLinear unpack(const std::map<std::string, at::Tensor>& tensors, const Scheme& scheme);

// A linear in the naive layout, as the tensors of
// <qforge/formats/ct_naive_quantized_v1.h> hold it:
//   W[r, j] = weight_scale[r or 0] * (int: weight[r, j]; float: e4m3(weight[r, j]))
struct NaiveLinear {
  // format, from naive_linear: what compressed-tensors names it (§4.1 of the
  // research note): int-quantized (int weights), float-quantized (float
  // weights, input activations), naive-quantized (float weights alone).
  // compressed-tensors writes int weights alone as pack-quantized: to_affine.
  Scheme scheme;
  at::Tensor weight;        // int8 [N, K] (int) | uint8 [N, K] OCP E4M3FN bytes (float)
  at::Tensor weight_scale;  // float32 [N, 1] (channel) | [1] (tensor), finite, > 0
  at::Tensor input_scale;   // float32 [1], finite, > 0: static input activations only
};

// A QuantResult of format org.qforge.ct-naive-quantized/1 (its metadata text
// and tensors; bias and other tensors are ignored), checked against the
// format's header: metadata keys and values, dtypes, shapes, E4M3 codes that
// are not NaN (0x7F, 0xFF), finite positive scales.
NaiveLinear naive_linear(const std::string& metadata,
                         const std::map<std::string, at::Tensor>& tensors);
// That result's metadata (what naive_linear reads): "weights",
// "input_activations", "in_features", "out_features".
nlohmann::json naive_metadata(const NaiveLinear& linear);

// int weights without input activations as the affine linear pack() stores
// (8 bits, channel, symmetric: codes q + 128, the tensor scale per row).
AffineLinear to_affine(const NaiveLinear& linear);

// The tensors of a naive-format `linear`, named "<prefix>.weight" (int8, or
// uint8 marked F8_E4M3: qforge_host/io/safetensors.hpp), "<prefix>.weight_scale"
// (float16, shaped as in `linear`) and, for static input activations,
// "<prefix>.input_scale" (float16 [1]). Refuses a scale that is not a float16
// number (the file would hold another one).
std::vector<std::pair<std::string, at::Tensor>> pack(const std::string& prefix,
                                                     const NaiveLinear& linear);

// The reverse for a checkpoint's tensors (keyed by suffix; bias and other
// keys ignored) of a linear whose scheme has a naive format. As liberal as
// vLLM about scales (float16, bfloat16 or float32; [N, 1] or [N] for channel,
// [1] or [] for tensor), strict about the rest: weight I8 or F8_E4M3 per the
// type, no zero points or g_idx, input_scale exactly when static, finite
// positive scales, no NaN codes. The result holds float32 scales shaped as
// NaiveLinear says; the weight is the given tensor.
NaiveLinear unpack_naive(const std::map<std::string, at::Tensor>& tensors, const Scheme& scheme);

// ------------------------------------------------------------- sparsity --
// A pruned linear (qforge/formats/pruned_v1.h: "sparsity_structure"): the
// structure its producer claims, checked against its decoded zeros.
struct Sparsity {
  std::string structure;  // "N:M" or "unstructured"
  int64_t zeros = 0;      // weights that decode to exactly 0
  int64_t numel = 0;
};

// The sparsity of a linear whose decoded weight is 0 where `is_zero` (bool
// [out, in]) is true and whose producer claims `structure`. Refuses a
// malformed structure and a weight that breaks the N:M it claims (fewer than
// N zeros in a group of M consecutive inputs, or an input width that is not a
// multiple of M).
Sparsity sparsity_of(const at::Tensor& is_zero, const std::string& structure);

// config.json's "quantization_config.sparsity_config" (compressed-tensors'
// SparsityCompressionConfig, research/llm-compressor.md §2.7) for pruned
// linears stored dense: {"format": "dense", "targets": their names,
// "ignore": `ignore`, "global_sparsity": zeros / weights over the targets,
// "sparsity_structure": theirs when they share one, else "unstructured",
// "registry_requires_subclass": false}; {} when `targets` is empty. Refuses
// fused shards (q/k/v_proj, gate/up_proj) of which some are targets and
// others ignored, or with different structures.
nlohmann::ordered_json sparsity_config(const std::vector<std::pair<std::string, Sparsity>>& targets,
                                       const std::vector<std::string>& ignore);

// config.json's "quantization_config" for a model whose quantized linears are
// `layers` (name, scheme) and whose other linears are listed in `ignore`
// (exact names or "re:" regexes). One scheme: one group targeting "Linear"
// (so every Linear of the model must be in `layers` or `ignore`). Several:
// one group per scheme, in order of first appearance, targeting "re:"
// suffix regexes where they pick exactly that group's layers and exact names
// otherwise, so no linear matches two groups. Each group has its format; the
// global "format" is theirs, or "mixed-precision" when they differ. Keys
// sorted recursively as compressed-tensors writes them (json.dumps
// sort_keys). Refuses a layer also ignored, a duplicate name, and fused
// shards (q/k/v_proj, gate/up_proj of one module) with different schemes or
// ignore status, which vLLM rejects. `sparsity` (sparsity_config()) is
// written as "sparsity_config"; with a non-empty one, `layers` may be empty
// (a model pruned and not quantized: config_groups {}, format "dense").
nlohmann::ordered_json quantization_config(
    const std::vector<std::pair<std::string, Scheme>>& layers,
    const std::vector<std::string>& ignore,
    const nlohmann::ordered_json& sparsity = nlohmann::ordered_json::object());

// The scheme of linear `linear_name` in a checkpoint's quantization_config:
// nullopt when it is ignored or no group targets it (a dense linear).
// Matching: exact name or "re:" regex (anchored at the start) before the
// class name "Linear"; two groups matching at the same level with different
// schemes are refused. Refuses, naming the key, what qforge can't read: other
// quant_method / format, output activations, transforms, sparsity, a
// quantization_status other than "compressed"; for pack-quantized: input
// activations, float type, strategies other than group/channel, dynamic,
// block_structure, and 3/5/6/7 bits written by a compressed-tensors older
// than the dense packing (or without "version"); for the naive formats:
// weights other than 8-bit symmetric static channel/tensor, input
// activations other than 8-bit symmetric of the weights' type and dynamic
// token or static tensor.
std::optional<Scheme> parse_scheme(const nlohmann::json& quantization_config,
                                   const std::string& linear_name);
// Every config group's scheme, in the config's order, with parse_scheme's
// checks (the top-level keys, each group's format and args).
std::vector<Scheme> group_schemes(const nlohmann::json& quantization_config);

}  // namespace qforge::host::ct
