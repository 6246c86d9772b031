/* Quantizer components: one linear layer in, packed tensors out.
 *
 * The host calls `quantize` once per selected linear layer with the layer's
 * weight, calibration statistics and the effective parameters for that layer
 * (defaults, the user's `--set`, and per-layer overrides, already validated
 * against the schema). The quantizer reports its result through the
 * qforge_quantize_output sink: the named packed format it wrote, the packed
 * tensors, the dequantized weight and any error figures.
 *
 * Packed formats are named and versioned (DESIGN.md rule 8), e.g.
 * "org.qforge.rtn/1": that string plus the metadata JSON and tensor names are
 * the whole contract with the inference layer that consumes them. */
#ifndef QFORGE_QUANTIZER_H
#define QFORGE_QUANTIZER_H

#include "component.h"
#include "host.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The host contract for one call (what each tensor is, and when it is given,
 * follows the component's feature tags: component.h, QFORGE_FEATURE_*). Every
 * tensor is borrowed for the duration of the call, float32, dense, on the CPU;
 * the quantizer must not modify any of them.
 *
 * - `weight` is what to quantize. Under --qep it is already corrected for the
 *   error of earlier layers (W + α·WΔ(XᵀX+λI)⁻¹), so quantizers need not
 *   know about QEP.
 * - `bias` (borrowed, like every input) belongs in the packed format: a
 *   packed layer runs through its inference layer alone, which must add it
 *   (the in-tree formats store it as a float tensor "bias"). The dequantized
 *   weight excludes it; dequantized checkpoints keep the host's own copy.
 * - `hessian` is undamped 2/n XᵀX; dead input columns have zero diagonal. */
typedef struct qforge_quantize_input {
  uint32_t struct_size;           /* sizeof(qforge_quantize_input) as compiled by the host */
  uint32_t reserved;              /* 0 */
  const char* layer_name;         /* e.g. "model.layers.0.self_attn.q_proj" */
  const DLTensor* weight;         /* [out_features, in_features] float32, CPU */
  const DLTensor* bias;           /* [out_features] float32, or NULL */
  const DLTensor* hessian;        /* [in, in] float32, H = 2/n XᵀX, or NULL (no calibration) */
  uint64_t nsamples;              /* rows of X behind `hessian` (0 when NULL) */
  const DLTensor* inputs_fp;      /* [n, in] full-precision inputs; NULL unless needs-inputs-fp */
  const DLTensor* inputs_q;       /* [n, in] inputs from the quantized model; NULL unless
                                     needs-inputs-q */
  const DLTensor* act_stats;      /* [in] per-channel mean |x|; NULL unless needs-act-stats */
  const qforge_param_value* const* params; /* effective parameters, in schema order */
  uint32_t param_count;
  uint32_t reserved2;             /* 0 */

  /* ---- ABI 1.2 (read it only when struct_size covers it) ---- */
  const DLTensor* act_absmax;     /* [in] per-channel max |x|; NULL unless needs-act-absmax */
} qforge_quantize_input;

/* Where a quantizer puts its result. Every function may be called from the
 * thread running `quantize` only, and only during that call. */
typedef struct qforge_quantize_output {
  uint32_t struct_size;           /* sizeof(qforge_quantize_output) as compiled by the host */
  uint32_t reserved;              /* 0 */
  void* host_data;                /* private to the host */

  /* Names the packed format (e.g. "org.qforge.rtn/1") and its metadata, a JSON
   * object as UTF-8 text (e.g. {"bits":4,"group_size":128}). Both are copied.
   * Required exactly once. */
  qforge_status* (*set_format)(const struct qforge_quantize_output* out,
                               const char* format_id, const char* metadata_json);
  /* Adds one packed tensor. Ownership of `tensor` moves to the host even when
   * a status is returned. Names are unique within one result. */
  qforge_status* (*add_tensor)(const struct qforge_quantize_output* out, const char* name,
                               DLManagedTensor* tensor);
  /* The dequantized weight, [out_features, in_features] float32. Ownership
   * moves to the host. Required exactly once. */
  qforge_status* (*set_dequantized)(const struct qforge_quantize_output* out,
                                    DLManagedTensor* weight);
  /* An extra figure for the per-layer report, e.g. ("hessian_error", 0.12).
   * The host computes the standard error figures itself. */
  qforge_status* (*set_metric)(const struct qforge_quantize_output* out, const char* name,
                               double value);
} qforge_quantize_output;

typedef struct qforge_quantizer {
  uint32_t struct_size;           /* sizeof(qforge_quantizer) as compiled by the plugin */
  uint32_t reserved;              /* 0 */
  const char* const* output_formats; /* NULL-terminated ids of the formats it may write */

  /* Quantizes one layer. Returns NULL on success. May be called from any
   * thread; the host does not call it concurrently for one component. */
  qforge_status* (*quantize)(const qforge_host* host, const qforge_quantize_input* input,
                             const qforge_quantize_output* output);
} qforge_quantizer;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_QUANTIZER_H */
