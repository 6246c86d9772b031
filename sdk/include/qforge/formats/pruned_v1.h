/* Packed format "org.qforge.pruned/1": one linear layer whose weight is
 * pruned (some weights exactly 0) and otherwise kept in float32 — what a
 * pruning method without quantization writes (SparseGPT, magnitude pruning:
 * org.qforge.sparsegpt, org.qforge.magnitude), run by org.qforge.pruned.layer.
 * Compressed-tensors checkpoints store it dense ("format": "dense" in
 * sparsity_config). This header is the one place the layout is written down.
 *
 * Notation: weight W [N = out_features, K = in_features].
 *
 * Tensors:
 *   weight  float32 [N, K]  the weight, the pruned entries exactly 0 (+0.0 or
 *                           -0.0), the kept ones as the method left them
 *   bias    float32 [N]     only when the layer has one
 *
 * Decoding: W is the weight itself; y = x Wᵀ + bias.
 *
 * Metadata (a JSON object):
 *   "in_features"         integer K >= 1
 *   "out_features"        integer N >= 1
 *   "sparsity_structure"  "N:M" (e.g. "2:4": 0 < N < M <= 64) or "unstructured"
 *   "sparsity"            number in [0, 1]: the fraction of the N·K weights
 *                         that are 0
 *
 * "N:M" means: K is a multiple of M, and in every row r and every group of M
 * consecutive inputs [j, j + M), j a multiple of M, at least N weights are 0
 * (so at most M − N are stored by an N:M kernel; the methods of qforge make
 * it exactly N). Readers refuse a weight that breaks the structure it claims.
 * "unstructured" claims no pattern.
 *
 * The generic key "sparsity_structure" (QFORGE_META_SPARSITY_STRUCTURE), with
 * the same values and meaning for the decoded weight, may appear in the
 * metadata of ANY packed format, saying that the layer was pruned before or
 * while it was quantized (e.g. org.qforge.gptq/1 or
 * org.qforge.ct-naive-quantized/1 written by org.qforge.sparsegpt): its zeros
 * decode to exactly 0. Absent means the layer was not pruned. Save formats
 * use it to describe the model's sparsity (compressed-tensors'
 * sparsity_config); readers of those formats may ignore it. */
#ifndef QFORGE_FORMATS_PRUNED_V1_H
#define QFORGE_FORMATS_PRUNED_V1_H

#define QFORGE_FORMAT_PRUNED_V1 "org.qforge.pruned/1"

/* Tensor names. */
#define QFORGE_PRUNED_V1_WEIGHT "weight"
#define QFORGE_PRUNED_V1_BIAS "bias"

/* Metadata keys. */
#define QFORGE_PRUNED_V1_IN_FEATURES "in_features"
#define QFORGE_PRUNED_V1_OUT_FEATURES "out_features"
#define QFORGE_PRUNED_V1_SPARSITY "sparsity"
/* Generic: any format's metadata may carry it (see above). */
#define QFORGE_META_SPARSITY_STRUCTURE "sparsity_structure"

/* Values of "sparsity_structure" besides "N:M". */
#define QFORGE_SPARSITY_UNSTRUCTURED "unstructured"

#endif /* QFORGE_FORMATS_PRUNED_V1_H */
