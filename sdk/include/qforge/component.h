/* Component descriptors (DESIGN.md rule 7): what a plugin offers.
 *
 * A plugin library offers one or more components. Each describes itself with
 * a qforge_component_desc: a stable reverse-DNS id, versions, vendor, license,
 * feature tags, a typed parameter schema, and a kind-specific function table.
 * All of it is static data owned by the plugin, valid while the library is
 * loaded (the host never unloads a library while anything it made is alive).
 *
 * Arrays of ABI structs are always passed as arrays of pointers, so that a
 * struct grown by a later minor never changes the stride a reader assumes. */
#ifndef QFORGE_COMPONENT_H
#define QFORGE_COMPONENT_H

#include "dlpack.h"
#include "params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Component kinds, carried as int32_t. */
enum {
  QFORGE_COMPONENT_QUANTIZER = 1,       /* vtable: const qforge_quantizer* */
  QFORGE_COMPONENT_INFERENCE_LAYER = 2, /* vtable: const qforge_inference_layer* */
  QFORGE_COMPONENT_POSTPROCESS = 3,     /* vtable: const qforge_postprocess* */
  QFORGE_COMPONENT_PREPROCESS = 4       /* ABI 1.2; vtable: const qforge_preprocess*
                                           (qforge/preprocess.h); set min_host_minor 2 */
};

typedef struct qforge_component_desc {
  uint32_t struct_size;        /* sizeof(qforge_component_desc) as compiled by the plugin */
  int32_t kind;                /* QFORGE_COMPONENT_* */
  uint32_t min_host_minor;     /* lowest host ABI minor this component needs; the
                                  host refuses the component when its minor is lower */
  uint32_t reserved;           /* 0 */
  const char* id;              /* stable reverse-DNS id, [a-z0-9._-], at least one dot,
                                  e.g. "org.qforge.rtn"; unique among loaded components */
  const char* name;            /* short human name, e.g. "Round-to-nearest" */
  const char* version;         /* the component's own version, e.g. "1.0.0" */
  const char* vendor;          /* who ships it */
  const char* license;         /* SPDX expression, e.g. "MIT" */
  const char* description;     /* one paragraph; may cite the paper */
  const char* const* features; /* NULL-terminated tags (may be NULL); see QFORGE_FEATURE_* */
  const qforge_param_desc* const* params; /* param_count pointers (NULL when 0) */
  uint32_t param_count;
  uint32_t reserved2;          /* 0 */
  const void* vtable;          /* the kind's function table; starts with struct_size */
  /* Optional component features by id and revision (DESIGN.md rule 10);
   * NULL, or returns NULL for unknown ids. Any thread. */
  const void* (*get_extension)(const char* id, uint32_t revision);
} qforge_component_desc;

/* Feature tags a quantizer declares in `features`. The QFORGE_FEATURE_NEEDS_*
 * tags and CALIBRATION_FREE change what the host computes and passes in
 * qforge_quantize_input; every other tag (e.g. "weight-only", "per-group")
 * is shown by `qforge plugins` and has no effect.
 *
 * needs-hessian     `hessian` = 2/n XᵀX of the layer's calibration inputs (the
 *                   quantized stream), undamped: the quantizer adds its own
 *                   damping. (The host also passes it, when it calibrates,
 *                   to quantizers that do not ask: it computes H anyway for
 *                   its error figures.)
 * needs-inputs-q    `inputs_q` = X, the layer's inputs in the model as
 *                   quantized so far, [n, in] float32, n calibration tokens.
 * needs-inputs-fp   `inputs_fp` = the same layer's inputs in the
 *                   full-precision model, [n, in] float32, row for row with
 *                   `inputs_q` (the host runs the full-precision stream for
 *                   it, as under --qep).
 * needs-act-stats   `act_stats` = mean |x| per input channel over the
 *                   quantized stream's n tokens, [in] float32.
 * needs-act-absmax  (ABI 1.2) `act_absmax` = max |x| per input channel over
 *                   the same tokens, [in] float32 (static activation scales).
 * calibration-free  the quantizer can do without calibration data: `quantize`
 *                   runs without --calib (`hessian` NULL, `nsamples` 0 and
 *                   every needs-* input NULL). With --calib the inputs of its
 *                   needs-* tags are computed as usual (e.g. a quantizer whose
 *                   dynamic mode needs nothing and whose static mode needs
 *                   act_absmax declares both tags).
 * Inputs a quantizer does not ask for are NULL and never computed. */
#define QFORGE_FEATURE_NEEDS_HESSIAN "needs-hessian"
#define QFORGE_FEATURE_NEEDS_INPUTS_Q "needs-inputs-q"
#define QFORGE_FEATURE_NEEDS_INPUTS_FP "needs-inputs-fp"
#define QFORGE_FEATURE_NEEDS_ACT_STATS "needs-act-stats"
#define QFORGE_FEATURE_NEEDS_ACT_ABSMAX "needs-act-absmax"
#define QFORGE_FEATURE_CALIBRATION_FREE "calibration-free"

/* A named tensor, borrowed for the duration of a call. */
typedef struct qforge_named_tensor {
  uint32_t struct_size;        /* sizeof(qforge_named_tensor) as compiled by the producer */
  uint32_t reserved;           /* 0 */
  const char* name;            /* e.g. "qweight" */
  const DLTensor* tensor;
} qforge_named_tensor;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_COMPONENT_H */
