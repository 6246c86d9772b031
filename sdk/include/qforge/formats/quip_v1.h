/* Packed format "org.qforge.quip/1": a weight W [O, I] quantized by QuIP
 * (Chee et al. 2023, "QuIP: 2-bit quantization of large language models with
 * guarantees") in an incoherent basis, written by org.qforge.quip:
 *
 *     W = Uᵀ · Q̂ · V · diag(1 / rescale),
 *
 * Q̂ [O, I] an affine grid (as org.qforge.rtn/1), U [O, O] and V [I, I]
 * orthogonal randomized Hadamard transforms (qforge_kernels/hadamard.hpp):
 *
 *     T = (H_{2^a} ⊗ B) · diag(signs) / √(2^a),   size = 2^a · r,
 *
 * H_{2^a} the Sylvester–Hadamard matrix (H_1 = [1], H_2k = [[H_k, H_k], [H_k, −H_k]]),
 * B the r × r base: for kind "hadamard" the built-in Hadamard matrix of order
 * r (Sylvester for powers of two; Paley I over GF(q), q = r − 1 ≡ 3 mod 4, or
 * Paley II, q = r/2 − 1 ≡ 1 mod 4, as hadamard.cpp constructs them) divided by
 * √r; for kind "random" the matrix qforge_kernels' random_orthogonal(r, seed)
 * regenerates from the seed in the metadata (a fixed procedure in IEEE
 * double: std::mt19937_64, sums of 12 uniforms, modified Gram–Schmidt); for
 * kind "orthogonal" the stored tensor base_u / base_v.
 *
 * Metadata (a JSON object):
 *   "bits"          integer, 2..8: bits per code B
 *   "group_size"    integer >= 1: input columns per group G (I: one per row)
 *   "in_features"   integer I >= 1
 *   "out_features"  integer O >= 1
 *   "u_base_kind"        "hadamard", "random", "orthogonal", or "none" (U = I:
 *                        no output transform, no u_pow2 / u_base / sign_u / base_u)
 *   "u_pow2", "u_base"   integers: U's 2^a and r (2^a · r = O, r <= 1024)
 *   "u_seed"             integer in [0, 2^53): kind "random" only
 *   "v_pow2", "v_base", "v_base_kind", "v_seed": the same for V (2^a · r = I;
 *                        "none" is not allowed for V)
 *   "seed"               integer: the layer's seed the signs came from
 *                        (informational: the stored signs are what counts)
 *
 * Tensors:
 *   qweight  int32   [O, ceil(I*B/32)]  the codes of Q̂, as org.qforge.rtn/1
 *   scales   float16 [O, groups]
 *   zeros    uint8 or float16 [O, groups]  in [0, 2^B − 1]; float16 when
 *                                       they are half-integers (the per-tensor
 *                                       grid's 2^B levels symmetric about 0
 *                                       have zero (2^B − 1)/2)
 *   rescale  float16 or float32 [I]     > 0
 *   sign_u   int8    [O]                ±1 (absent for u_base_kind "none")
 *   sign_v   int8    [I]                ±1
 *   base_u   float32 [r_u, r_u]         only for u_base_kind "orthogonal"
 *   base_v   float32 [r_v, r_v]         only for v_base_kind "orthogonal"
 *   bias     float32 [O]                only when the layer has a bias
 *
 * Decoding:
 *   Q̂[o, i] = scales[o, g] * (q[o, i] − zeros[o, g]), g = i / G (float32);
 *   y = Uᵀ · (Q̂ · (V · (x / rescale))) (+ bias). */
#ifndef QFORGE_FORMATS_QUIP_V1_H
#define QFORGE_FORMATS_QUIP_V1_H

#define QFORGE_FORMAT_QUIP_V1 "org.qforge.quip/1"

/* Tensor names. */
#define QFORGE_QUIP_V1_QWEIGHT "qweight"
#define QFORGE_QUIP_V1_SCALES "scales"
#define QFORGE_QUIP_V1_ZEROS "zeros"
#define QFORGE_QUIP_V1_RESCALE "rescale"
#define QFORGE_QUIP_V1_SIGN_U "sign_u"
#define QFORGE_QUIP_V1_SIGN_V "sign_v"
#define QFORGE_QUIP_V1_BASE_U "base_u"
#define QFORGE_QUIP_V1_BASE_V "base_v"
#define QFORGE_QUIP_V1_BIAS "bias"

/* Metadata keys. */
#define QFORGE_QUIP_V1_BITS "bits"
#define QFORGE_QUIP_V1_GROUP_SIZE "group_size"
#define QFORGE_QUIP_V1_IN_FEATURES "in_features"
#define QFORGE_QUIP_V1_OUT_FEATURES "out_features"
#define QFORGE_QUIP_V1_U_POW2 "u_pow2"
#define QFORGE_QUIP_V1_U_BASE "u_base"
#define QFORGE_QUIP_V1_U_BASE_KIND "u_base_kind"
#define QFORGE_QUIP_V1_V_POW2 "v_pow2"
#define QFORGE_QUIP_V1_V_BASE "v_base"
#define QFORGE_QUIP_V1_V_BASE_KIND "v_base_kind"
#define QFORGE_QUIP_V1_U_SEED "u_seed"
#define QFORGE_QUIP_V1_V_SEED "v_seed"
#define QFORGE_QUIP_V1_SEED "seed"

/* Base kinds. */
#define QFORGE_QUIP_V1_KIND_HADAMARD "hadamard"
#define QFORGE_QUIP_V1_KIND_RANDOM "random"
#define QFORGE_QUIP_V1_KIND_ORTHOGONAL "orthogonal"
#define QFORGE_QUIP_V1_KIND_NONE "none"

#endif /* QFORGE_FORMATS_QUIP_V1_H */
