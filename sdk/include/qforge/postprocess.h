/* Post-process components: run over a whole quantized model through host
 * services (e.g. LoRA SFT, block-wise reconstruction), after quantization
 * (`qforge quantize --postprocess ID`) or on a saved quantized checkpoint
 * (`qforge postprocess --model DIR --postprocess ID`).
 *
 * The model is reached only through qforge_model_services. Training support
 * (host-side autograd, optimizers, losses, plugin adapters) is the host
 * extension "qforge.host.train", looked up with qforge_host.get_extension;
 * services added later are appended to qforge_model_services in a new minor,
 * and a component that needs them sets its `min_host_minor`. */
#ifndef QFORGE_POSTPROCESS_H
#define QFORGE_POSTPROCESS_H

#include "component.h"
#include "host.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Access to the model being processed. Valid during `run` only; its functions
 * may be called from the thread running `run` only. */
typedef struct qforge_model_services {
  uint32_t struct_size;           /* sizeof(qforge_model_services) as compiled by the host */
  uint32_t reserved;              /* 0 */
  void* host_data;                /* private to the host */

  /* Number of linear layers and their names (stable for the whole `run`). */
  uint32_t (*layer_count)(const struct qforge_model_services* model);
  const char* (*layer_name)(const struct qforge_model_services* model, uint32_t index);
  /* Copies parameter `name` (e.g. "model.layers.0.mlp.up_proj.weight"; for a
   * quantized layer its dequantized weight) into a new tensor owned by the
   * caller, who calls its deleter. */
  qforge_status* (*get_parameter)(const struct qforge_model_services* model, const char* name,
                                  DLManagedTensor** value);
  /* Replaces parameter `name` with a copy of `value` (same shape). */
  qforge_status* (*set_parameter)(const struct qforge_model_services* model, const char* name,
                                  const DLTensor* value);

  /* ---- ABI 1.1 (read them only when host->abi_minor >= 1) ---- */
  /* Number of transformer blocks. */
  uint32_t (*block_count)(const struct qforge_model_services* model);
  /* Linear `index`: its [out_features, in_features] shape, the block it
   * belongs to (block_count() for one outside the blocks, e.g. lm_head), and
   * the id of its packed format ("" for a dense layer). */
  qforge_status* (*layer_info)(const struct qforge_model_services* model, uint32_t index,
                               int64_t* out_features, int64_t* in_features, uint32_t* block,
                               const char** format_id);

  /* ---- ABI 1.2 (read them only when host->abi_minor >= 2) ---- */
  /* The parameters whose output channels are linear `index`'s input channels
   * one to one (from the architecture table): `*weight` names a norm's weight
   * [in] or a linear's weight [in, k] (its rows), `*bias` that linear's bias
   * [in] or "". Dividing them by s (per channel) and multiplying the input
   * columns of every linear with the same source by s leaves the model's
   * function unchanged (SmoothQuant, AWQ). Both "" when there is none (e.g.
   * o_proj under grouped-query attention, where v_proj's rows are fewer than
   * o_proj's inputs). Strings are owned by the host, valid during `run`. */
  qforge_status* (*input_source)(const struct qforge_model_services* model, uint32_t index,
                                 const char** weight, const char** bias);
  /* Statistics of linear `index`'s inputs over the calibration tokens, per
   * input channel: a new float32 tensor [3, in] (rows: min x, max x, mean |x|)
   * owned by the caller. Available to pre-processes in the pipeline (the
   * block's calibration inputs as the block is now); elsewhere, or without
   * calibration data, QFORGE_STATUS_UNSUPPORTED. Linears with one source
   * share their inputs; the host computes them once, and again after a
   * set_parameter (the block changed). */
  qforge_status* (*input_stats)(const struct qforge_model_services* model, uint32_t index,
                                DLManagedTensor** stats);

  /* ---- ABI 1.3 (read it only when host->abi_minor >= 3) ---- */
  /* The second moment of linear `index`'s inputs over the calibration
   * tokens: a new float32 tensor G [in, in] = (1/n) sum_t x_t x_t^T owned by
   * the caller, so that a change dW of the linear's weight changes its output
   * by mean_t |dW x_t|^2 = tr(dW G dW^T) (AWQ's objective). Available where
   * input_stats is, computed the same way (once per shared input, again after
   * a set_parameter); elsewhere QFORGE_STATUS_UNSUPPORTED. */
  qforge_status* (*input_gram)(const struct qforge_model_services* model, uint32_t index,
                               DLManagedTensor** gram);
} qforge_model_services;

typedef struct qforge_postprocess {
  uint32_t struct_size;           /* sizeof(qforge_postprocess) as compiled by the plugin */
  uint32_t reserved;              /* 0 */
  /* Runs the post-process with validated parameters. Main thread. */
  qforge_status* (*run)(const qforge_host* host, const qforge_model_services* model,
                        const qforge_param_value* const* params, uint32_t param_count);

  /* ---- ABI 1.1 ---- */
  /* The per-block hook; NULL when the post-process works on whole models
   * only. `qforge quantize --postprocess ID` calls it for each block, after
   * the block's linears are quantized and before its output feeds the next
   * block (instead of calling `run` at the end), so the post-process can
   * reconstruct block `block` first. `model` then holds that block's linears
   * only, and a trainer made during the call trains on the block
   * (qforge/ext/train.h: QFORGE_LOSS_MSE_BLOCK_TARGET). Main thread. */
  qforge_status* (*run_block)(const qforge_host* host, const qforge_model_services* model,
                              uint32_t block, const qforge_param_value* const* params,
                              uint32_t param_count);
} qforge_postprocess;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_POSTPROCESS_H */
