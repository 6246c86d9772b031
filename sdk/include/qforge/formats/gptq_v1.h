/* Packed format "org.qforge.gptq/1": AutoGPTQ's v1 checkpoint layout
 * (checkpoint_format "gptq", as transformers, vLLM and GPTQModel load it) for
 * one group-quantized weight W [O, I]. Written by org.qforge.gptq; the host's
 * GPTQ checkpoints store these tensors as they are.
 *
 * Metadata (a JSON object):
 *   "bits"               integer, 2..8: bits per code B
 *   "group_size"         integer >= 1: input columns per group G, the effective
 *                        one (I for one group per output row);
 *                        groups = ceil(I / G)
 *   "in_features"        integer I >= 1
 *   "out_features"       integer O >= 1
 *   "sym"                boolean, optional: symmetric grid
 *   "desc_act"           boolean, optional: act-order (g_idx not sorted)
 *   "static_groups"      boolean, optional: grids computed before the column loop
 *   "checkpoint_format"  "gptq" when present (v1: qzeros hold zero - 1)
 *   "zero_point_min"     1: no zero point is below 1 (v1 cannot store zero 0)
 *   "damp_percent"       number: the dampening the quantizer used
 *   "mse"                boolean: the quantizer searched clipped grids
 *   Readers need only bits, group_size, in_features and out_features.
 *
 * Tensors:
 *   qweight  int32   [ceil(I*B/32), O]  column o: the I codes of output o in the
 *                                       original input order as one LSB-first
 *                                       bit stream (code i at stream bits
 *                                       [i*B, (i+1)*B), stream bit k is bit
 *                                       k % 32 of word k / 32: 3-bit codes
 *                                       straddle words; the last word is
 *                                       zero-padded)
 *   qzeros   int32   [groups, ceil(O*B/32)]  row g: zero - 1 of every output,
 *                                       one bit stream in the same layout
 *   scales   float16 [groups, O]
 *   g_idx    int32   [I]                the group of each input, in [0, groups);
 *                                       i / G unless act-order without static
 *                                       groups, where g_idx[perm[j]] = j / G for
 *                                       the processing order perm
 *   bias     float16, bfloat16 or float32 [O], only when the layer has a bias
 *
 * Decoding:
 *   W[o, i] = scales[g, o] * (q[i, o] - (z[g, o] + 1)),  g = g_idx[i],
 *   q[i, o] the code i of qweight's column o, z[g, o] the value o of qzeros'
 *   row g; computed in float32, in that order. */
#ifndef QFORGE_FORMATS_GPTQ_V1_H
#define QFORGE_FORMATS_GPTQ_V1_H

#define QFORGE_FORMAT_GPTQ_V1 "org.qforge.gptq/1"

/* Tensor names. */
#define QFORGE_GPTQ_V1_QWEIGHT "qweight"
#define QFORGE_GPTQ_V1_QZEROS "qzeros"
#define QFORGE_GPTQ_V1_SCALES "scales"
#define QFORGE_GPTQ_V1_G_IDX "g_idx"
#define QFORGE_GPTQ_V1_BIAS "bias"

/* Metadata keys. */
#define QFORGE_GPTQ_V1_BITS "bits"
#define QFORGE_GPTQ_V1_GROUP_SIZE "group_size"
#define QFORGE_GPTQ_V1_IN_FEATURES "in_features"
#define QFORGE_GPTQ_V1_OUT_FEATURES "out_features"
#define QFORGE_GPTQ_V1_SYM "sym"
#define QFORGE_GPTQ_V1_DESC_ACT "desc_act"
#define QFORGE_GPTQ_V1_STATIC_GROUPS "static_groups"
#define QFORGE_GPTQ_V1_CHECKPOINT_FORMAT "checkpoint_format"
#define QFORGE_GPTQ_V1_ZERO_POINT_MIN "zero_point_min"
#define QFORGE_GPTQ_V1_DAMP_PERCENT "damp_percent"
#define QFORGE_GPTQ_V1_MSE "mse"

/* Metadata values. */
#define QFORGE_GPTQ_V1_CHECKPOINT_FORMAT_V1 "gptq" /* of "checkpoint_format" */
/* qzeros hold zero - QFORGE_GPTQ_V1_ZERO_OFFSET, so no zero point is below it
 * (the value of "zero_point_min"). */
#define QFORGE_GPTQ_V1_ZERO_OFFSET 1

#endif /* QFORGE_FORMATS_GPTQ_V1_H */
