/* Packed format "org.qforge.dbf/1": a double binary factorization of a weight
 * W [O, I] (Boža & Macko 2025, "Addition is almost all you need: Compressing
 * neural networks with double binary factorization", arXiv 2505.11076):
 *
 *     W ≈ diag(s4) · S_A · diag(s2) · S_B · diag(s0),
 *     S_A ∈ {±1}^{O×K},  S_B ∈ {±1}^{K×I},
 *
 * written by org.qforge.dbf.
 *
 * Metadata (a JSON object):
 *   "in_features"   integer I >= 1
 *   "out_features"  integer O >= 1
 *   "k"             integer K >= 1: the middle dimension (may exceed min(O, I))
 *
 * Tensors:
 *   sign_a  uint8   [O, ceil(K/8)]  row o: S_A[o, :] as bits, MSB first (bit 7 of
 *                                   byte 0 is S_A[o, 0]); 1 = +1, 0 = -1; the
 *                                   tail of each row's last byte is 1
 *   sign_b  uint8   [K, ceil(I/8)]  row j: S_B[j, :], the same packing
 *   s4      float16 [O]             output scale
 *   s2      float16 [K]             middle scale
 *   s0      float16 [I]             input scale
 *   bias    float32 [O]             only when the layer has a bias
 *
 * Decoding:
 *   (scales read as float32) W[o, i] = s4[o] * sum_j S_A[o, j] * s2[j] * S_B[j, i] * s0[i],
 *   y = s4 ⊙ (S_A · (s2 ⊙ (S_B · (s0 ⊙ x)))) (+ bias). */
#ifndef QFORGE_FORMATS_DBF_V1_H
#define QFORGE_FORMATS_DBF_V1_H

#define QFORGE_FORMAT_DBF_V1 "org.qforge.dbf/1"

/* Tensor names. */
#define QFORGE_DBF_V1_SIGN_A "sign_a"
#define QFORGE_DBF_V1_SIGN_B "sign_b"
#define QFORGE_DBF_V1_S4 "s4"
#define QFORGE_DBF_V1_S2 "s2"
#define QFORGE_DBF_V1_S0 "s0"
#define QFORGE_DBF_V1_BIAS "bias"

/* Metadata keys. */
#define QFORGE_DBF_V1_IN_FEATURES "in_features"
#define QFORGE_DBF_V1_OUT_FEATURES "out_features"
#define QFORGE_DBF_V1_K "k"

#endif /* QFORGE_FORMATS_DBF_V1_H */
