/* Packed format "org.qforge.rtn/1": a group-quantized weight W [O, I] with
 * codes packed along the input, written by org.qforge.rtn.
 *
 * Metadata (a JSON object):
 *   "bits"          integer, 2..8: bits per code B
 *   "group_size"    integer >= 1: input columns per group G, the effective one
 *                   (I for one group per output row); groups = ceil(I / G), the
 *                   last one shorter when G does not divide I
 *   "sym"           boolean: symmetric grid (the zeros are then all 2^(B-1))
 *   "in_features"   integer I >= 1
 *   "out_features"  integer O >= 1
 *
 * Tensors:
 *   qweight  int32   [O, ceil(I*B/32)]  row o: the I codes of output o as one
 *                                       LSB-first bit stream (code i at stream
 *                                       bits [i*B, (i+1)*B), stream bit k is bit
 *                                       k % 32 of word k / 32; the last word is
 *                                       zero-padded)
 *   scales   float32 [O, groups]
 *   zeros    uint8   [O, groups]        each <= 2^B - 1
 *   bias     float32 [O]                only when the layer has a bias
 *
 * Decoding:
 *   W[o, i] = scales[o, g] * (q[o, i] - zeros[o, g]),  g = i / G,
 *   q[o, i] the code i of qweight's row o; computed in float32, in that order. */
#ifndef QFORGE_FORMATS_RTN_V1_H
#define QFORGE_FORMATS_RTN_V1_H

#define QFORGE_FORMAT_RTN_V1 "org.qforge.rtn/1"

/* Tensor names. */
#define QFORGE_RTN_V1_QWEIGHT "qweight"
#define QFORGE_RTN_V1_SCALES "scales"
#define QFORGE_RTN_V1_ZEROS "zeros"
#define QFORGE_RTN_V1_BIAS "bias"

/* Metadata keys. */
#define QFORGE_RTN_V1_BITS "bits"
#define QFORGE_RTN_V1_GROUP_SIZE "group_size"
#define QFORGE_RTN_V1_SYM "sym"
#define QFORGE_RTN_V1_IN_FEATURES "in_features"
#define QFORGE_RTN_V1_OUT_FEATURES "out_features"

#endif /* QFORGE_FORMATS_RTN_V1_H */
