/* Packed format "org.qforge.ct-naive-quantized/1": one linear layer whose
 * weight is stored unpacked, one 8-bit code per weight, with an optional
 * quantization of its input activations — compressed-tensors' "naive"
 * layout, which llm-compressor writes under three names: `int-quantized`
 * (INT8 weights with quantized activations: W8A8), `float-quantized` (FP8
 * weights with FP8 activations: FP8, FP8_DYNAMIC) and `naive-quantized` (FP8
 * weights alone). Written by org.qforge.w8a8 and org.qforge.fp8, run by
 * org.qforge.w8a8.layer. This header is the one place the layout is written
 * down.
 *
 * Notation: weight W [N = out_features, K = in_features].
 *
 * Tensors, named <linear>.<name> in compressed-tensors checkpoints:
 *
 *   weight         type "int":   int8  [N, K]  the signed code q in [-128, 127]
 *                  type "float": uint8 [N, K]  the byte of an OCP FP8 E4M3FN
 *                                number e (sign, 4 exponent bits of bias 7, 3
 *                                mantissa bits; no infinities, 0x7F/0xFF NaN,
 *                                largest finite 448); compressed-tensors
 *                                files store it with safetensors dtype F8_E4M3
 *   weight_scale   float32 [N, 1] (strategy "channel") or [1] ("tensor");
 *                  every scale is exactly a float16 (the float16 scales of a
 *                  compressed-tensors file are the same numbers)
 *   input_scale    float32 [1]   only for static input activations
 *   bias           float32 [N]   only when the layer has one
 *
 * Decoding the weight, for every output r and input j (s = weight_scale[r]
 * or weight_scale[0]):
 *   int:    W[r, j] = s * q[r, j]
 *   float:  W[r, j] = s * e4m3(weight[r, j])      (decoded exactly to float32)
 *
 * Input activations, applied to x at run time (y = x̂ Wᵀ + bias), row r:
 *   int, "token" dynamic:  t = max_j |x[r, j]|; s_r = t / 127;
 *                          q = clamp(round_half_even(x * (127 / t)), -127, 127)
 *                          (q = 0 and s_r = 0 for an all-zero row)
 *   int, "tensor" static:  s_r = input_scale; q = clamp(round_half_even(x * (1 / s_r)), -127, 127)
 *   float, "token" dynamic: t = max_j |x[r, j]|; s_r = t / 448;
 *                          x̂ = s_r * e4m3_rne(x * (448 / t)), saturating at ±448
 *   float, "tensor" static: s_r = input_scale; x̂ = s_r * e4m3_rne(x * (1 / s_r))
 *   int:   y[r, o] = float(Σ_j q[r, j] q_w[o, j]) * (s_r * s_o)  (exact int32 sums)
 *   float: y[r, o] = s_r * s_o * Σ_j e4m3(x̂ code) e4m3(w code)  (float32 sums)
 * Without input activations (`input_activations` null, FP8 weight-only) y =
 * x Wᵀ in float32.
 *
 * Metadata (a JSON object; the names of compressed-tensors' QuantizationArgs):
 *   "weights": {"num_bits": 8, "type": "int" | "float", "symmetric": true,
 *               "strategy": "channel" | "tensor"}
 *   "input_activations": null | {"num_bits": 8, "type": "int" | "float",
 *               "symmetric": true, "strategy": "token" | "tensor",
 *               "dynamic": true (token) | false (tensor)}
 *   "in_features": K, "out_features": N */
#ifndef QFORGE_FORMATS_CT_NAIVE_QUANTIZED_V1_H
#define QFORGE_FORMATS_CT_NAIVE_QUANTIZED_V1_H

#define QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1 "org.qforge.ct-naive-quantized/1"

/* Tensor names (suffixes of "<linear>."). */
#define QFORGE_CT_WEIGHT "weight"
#define QFORGE_CT_INPUT_SCALE "input_scale"
/* weight_scale: QFORGE_CT_WEIGHT_SCALE of ct_pack_quantized_v1.h ("weight_scale"). */
#define QFORGE_CT_NAIVE_WEIGHT_SCALE "weight_scale"
#define QFORGE_CT_NAIVE_BIAS "bias"

/* Metadata keys. */
#define QFORGE_CT_META_WEIGHTS "weights"
#define QFORGE_CT_META_INPUT_ACTIVATIONS "input_activations"
#define QFORGE_CT_META_TYPE "type"
#define QFORGE_CT_META_DYNAMIC "dynamic"
/* "num_bits", "symmetric", "strategy", "in_features", "out_features": as in
 * ct_pack_quantized_v1.h (QFORGE_CT_META_*). */

/* The format names in quantization_config. */
#define QFORGE_CT_FORMAT_INT_QUANTIZED "int-quantized"
#define QFORGE_CT_FORMAT_FLOAT_QUANTIZED "float-quantized"
#define QFORGE_CT_FORMAT_NAIVE_QUANTIZED "naive-quantized"

#endif /* QFORGE_FORMATS_CT_NAIVE_QUANTIZED_V1_H */
