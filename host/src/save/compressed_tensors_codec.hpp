// compressed-tensors `pack-quantized` codec: turns an affine-grid quantized
// linear into the tensors and quantization_config that llm-compressor writes
// (and vLLM / transformers load), and reads them back. The byte layout is
// written down once, in <qforge/formats/ct_pack_quantized_v1.h>; the config
// follows compressed-tensors QuantizationArgs/QuantizationScheme as of
// QFORGE_CT_WRITER_VERSION (see ../shared/research/llm-compressor.md §2-§5).
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

enum class Strategy { channel, group };
// none: natural order (null); weight: columns processed in activation order,
// natural groups ("static"/"weight", nothing stored); group: g_idx stored.
enum class ActOrder { none, weight, group };

// The part of compressed-tensors' QuantizationArgs a pack-quantized linear needs.
struct Scheme {
  int num_bits = 4;
  bool symmetric = true;
  Strategy strategy = Strategy::group;
  int64_t group_size = 128;       // > 0 for group, -1 for channel
  ActOrder actorder = ActOrder::none;
};
bool operator==(const Scheme& a, const Scheme& b);
inline bool operator!=(const Scheme& a, const Scheme& b) { return !(a == b); }
// "W4 g128 sym actorder=static", for messages.
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

// config.json's "quantization_config" for a model whose quantized linears are
// `layers` (name, scheme) and whose other linears are listed in `ignore`
// (exact names or "re:" regexes). One scheme: one group targeting "Linear"
// (so every Linear of the model must be in `layers` or `ignore`). Several:
// one group per scheme, in order of first appearance, targeting "re:"
// suffix regexes where they pick exactly that group's layers and exact names
// otherwise, so no linear matches two groups. Keys sorted recursively as
// compressed-tensors writes them (json.dumps sort_keys). Refuses a layer also
// ignored, a duplicate name, and fused shards (q/k/v_proj, gate/up_proj of
// one module) with different schemes or ignore status, which vLLM rejects.
nlohmann::ordered_json quantization_config(
    const std::vector<std::pair<std::string, Scheme>>& layers,
    const std::vector<std::string>& ignore);

// The scheme of linear `linear_name` in a checkpoint's quantization_config:
// nullopt when it is ignored or no group targets it (a dense linear).
// Matching: exact name or "re:" regex (anchored at the start) before the
// class name "Linear"; two groups matching at the same level with different
// schemes are refused. Refuses, naming the key, what qforge can't read: other
// quant_method / format, quantized activations, float type, strategies other
// than group/channel, dynamic, block_structure, transforms, sparsity, a
// quantization_status other than "compressed", and 3/5/6/7 bits written by a
// compressed-tensors older than the dense packing (or without "version").
std::optional<Scheme> parse_scheme(const nlohmann::json& quantization_config,
                                   const std::string& linear_name);

}  // namespace qforge::host::ct
