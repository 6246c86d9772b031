/* Packed format "org.qforge.ct-pack-quantized/1": one linear layer stored as
 * compressed-tensors `pack-quantized` (the layout llm-compressor writes and
 * vLLM / transformers load as W4A16, W8A16, ... weight-only INT). This header
 * is the one place the layout is written down; the host's codec
 * (host/src/save/compressed_tensors_codec.*) implements it.
 *
 * Notation: the linear has weight W [N = out_features, K = in_features];
 * b = num_bits (2..8); G = group_size; groups = ceil(K / G) for strategy
 * "group", 1 for strategy "channel"; words(n) = ceil(n * b / 32).
 *
 * Tensors, named <linear>.<name> in the safetensors files:
 *
 *   weight_packed      int32  [N, words(K)]       always
 *       Row r holds the K codes u[r, 0..K) (unsigned, u = q + 2^(b-1) for the
 *       signed code q in [-2^(b-1), 2^(b-1))) as one little-endian bit stream,
 *       least significant bit first: code j occupies stream bits
 *       [j*b, j*b + b); stream bit s is bit (s % 32) of word s / 32. Codes of
 *       3, 5, 6, 7 bits straddle word boundaries ("dense" packing,
 *       compressed-tensors >= 0.17; <= 0.16 packed floor(32/b) codes per
 *       word instead, which is NOT this format). For b in {2, 4, 8} both are
 *       the same bytes. The last word of a row is zero-padded. Example (b = 4):
 *       q = (-8, -1, 0, 7, 1, 2, 3, 4) -> word 0xCBA9F870.
 *   weight_scale       float16 | bfloat16 | float32   [N, groups]   always
 *       (the model dtype; qforge writes float16 unless told otherwise)
 *   weight_shape       int64  [2] = {N, K}         always
 *   weight_zero_point  int32  [words(N), groups]   only when symmetric is false
 *       The unsigned zero points z[r, g] in [0, 2^b), packed as above along
 *       dim 0 (output rows): column g is the bit stream of z[0..N, g].
 *       Absent when symmetric: the zero point is then 2^(b-1).
 *   weight_g_idx       int32  [K]                  only when actorder is "group"
 *       The group of each input column, in [0, groups). Group g holds
 *       exactly min(G, K - g*G) columns (the groups are contiguous runs of G
 *       once the columns are stably sorted by g_idx). Absent otherwise: the
 *       group of column j is then j / G.
 *   (bias, when the linear has one, is stored unchanged beside them.)
 *
 * Decoding, for every output r and input j:
 *   g       = actorder == "group" ? weight_g_idx[j] : (channel ? 0 : j / G)
 *   u       = bits [j*b, j*b + b) of row r of weight_packed
 *   z       = symmetric ? 2^(b-1) : bits [r*b, r*b + b) of column g of weight_zero_point
 *   W[r, j] = weight_scale[r, g] * (u - z)
 *
 * Metadata (a JSON object; the names of compressed-tensors' QuantizationArgs):
 *   "num_bits"      b (2..8)
 *   "symmetric"     true | false
 *   "strategy"      "group" | "channel"
 *   "group_size"    G (> 0) for "group", -1 for "channel"
 *   "actorder"      null | "static" | "group"
 *                   "static": the columns were processed in activation order
 *                   but keep their natural groups (nothing extra stored);
 *                   "group": weight_g_idx is stored
 *   "in_features"   K
 *   "out_features"  N
 *
 * In config.json the model's quantization_config has quant_method
 * "compressed-tensors", format "pack-quantized", and a "version" (the
 * compressed-tensors version whose schema and packing the file follows) of at
 * least QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION; a reader meeting 3/5/6/7-bit
 * weights with an older or missing version must not decode them as this
 * format. */
#ifndef QFORGE_FORMATS_CT_PACK_QUANTIZED_V1_H
#define QFORGE_FORMATS_CT_PACK_QUANTIZED_V1_H

#define QFORGE_FORMAT_CT_PACK_QUANTIZED_V1 "org.qforge.ct-pack-quantized/1"

/* Tensor names (suffixes of "<linear>."). */
#define QFORGE_CT_WEIGHT_PACKED "weight_packed"
#define QFORGE_CT_WEIGHT_SCALE "weight_scale"
#define QFORGE_CT_WEIGHT_ZERO_POINT "weight_zero_point"
#define QFORGE_CT_WEIGHT_G_IDX "weight_g_idx"
#define QFORGE_CT_WEIGHT_SHAPE "weight_shape"

/* Metadata keys. */
#define QFORGE_CT_META_NUM_BITS "num_bits"
#define QFORGE_CT_META_SYMMETRIC "symmetric"
#define QFORGE_CT_META_STRATEGY "strategy"
#define QFORGE_CT_META_GROUP_SIZE "group_size"
#define QFORGE_CT_META_ACTORDER "actorder"
#define QFORGE_CT_META_IN_FEATURES "in_features"
#define QFORGE_CT_META_OUT_FEATURES "out_features"

/* The format name in quantization_config ("format" and each group's "format"). */
#define QFORGE_CT_FORMAT_PACK_QUANTIZED "pack-quantized"
/* quantization_config "version" written by qforge: the compressed-tensors
 * release whose QuantizationArgs key set and packing the config follows. */
#define QFORGE_CT_WRITER_VERSION "0.18.0"
/* First compressed-tensors release with dense 3/5/6/7-bit packing. */
#define QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION "0.17.0"

#endif /* QFORGE_FORMATS_CT_PACK_QUANTIZED_V1_H */
