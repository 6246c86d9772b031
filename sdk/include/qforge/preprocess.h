/* Pre-process components (ABI 1.2): transform the model before or while it
 * is quantized, block by block in the pipeline, e.g. SmoothQuant's
 * per-channel scales folded into norms and linear columns, AWQ's scaling,
 * rotations. `qforge quantize --preprocess ID [--pre-set k=v ...]`
 * (repeatable, run in order) or "preprocess" in a recipe.
 *
 * The pipeline calls `run_block` for each block, after the block's
 * calibration inputs are known and before any of its linears is quantized.
 * Through `model` (qforge/postprocess.h) the component sees that block's
 * linears only: it reads and writes parameters (norm weights, linear weights
 * and biases: get_parameter / set_parameter), asks which parameters feed a
 * linear's inputs (input_source, from the architecture table), and receives
 * per-channel statistics of a linear's inputs (input_stats) computed by the
 * host on the block's calibration inputs, so memory stays one block's. What
 * it writes is what the quantizer then sees and what the checkpoint stores.
 * A component must keep the model's function (up to rounding) unless its
 * description says otherwise: the quantized stream and the full-precision
 * stream both run through the transformed block. */
#ifndef QFORGE_PREPROCESS_H
#define QFORGE_PREPROCESS_H

#include "component.h"
#include "host.h"
#include "postprocess.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qforge_preprocess {
  uint32_t struct_size;           /* sizeof(qforge_preprocess) as compiled by the plugin */
  uint32_t reserved;              /* 0 */
  /* Transforms block `block` with validated parameters. Main thread. */
  qforge_status* (*run_block)(const qforge_host* host, const qforge_model_services* model,
                              uint32_t block, const qforge_param_value* const* params,
                              uint32_t param_count);
} qforge_preprocess;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_PREPROCESS_H */
