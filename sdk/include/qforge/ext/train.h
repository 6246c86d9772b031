/* Training for post-processes: the host extension "qforge.host.train"
 * (ABI 1.1; DESIGN.md "Post-processes and training").
 *
 * Autograd never crosses the ABI. The host builds and differentiates the
 * model in its own tensor library: each packed linear is a frozen node whose
 * backward is its inference layer's `backward_input`, and the losses, the
 * optimizer (AdamW), clipping, the learning-rate schedule, the teacher (the
 * unquantized model), the training batches and the checkpoints of a training
 * run are the host's. What a plugin adds to the model crosses as an adapter:
 * an object with explicit `forward` and `backward` on DLPack tensors (e.g.
 * LoRA's y += (α/r)·B·A·dropout(x)), whose trainable tensors the host's
 * optimizer updates in place. The plugin owns the policy: where adapters go,
 * how many steps, the mix of losses.
 *
 * A post-process finds the table with
 *     host->get_extension(host, QFORGE_EXT_HOST_TRAIN, QFORGE_EXT_HOST_TRAIN_REVISION)
 * and declares min_host_minor = 1; a host of ABI 1.0 refuses such a
 * component when it loads the plugin.
 *
 * Threads: every function here is called on the thread running the
 * post-process's `run` or `run_block`, during that call only. */
#ifndef QFORGE_EXT_TRAIN_H
#define QFORGE_EXT_TRAIN_H

#include "../inference_layer.h"
#include "../postprocess.h"
#include "../quantizer.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QFORGE_EXT_HOST_TRAIN "qforge.host.train"
#define QFORGE_EXT_HOST_TRAIN_REVISION 2

/* Losses, carried as int32_t; new ones are appended in a later revision.
 * A token counts when its label is not -100 (padding, or the last position of
 * a sequence, which has nothing to predict); each loss is a mean over the
 * counted tokens of the micro-batch. z are logits, h block outputs. */
enum {
  QFORGE_LOSS_CROSS_ENTROPY = 1,      /* −log softmax(z_S)[label]: next-token prediction */
  QFORGE_LOSS_KL_TEACHER = 2,         /* τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)) (Hinton et al.
                                         2015, "Distilling the Knowledge in a Neural Network") */
  QFORGE_LOSS_MSE_TEACHER_LOGITS = 3, /* mean over the vocabulary of (z_S − z_T)² */
  QFORGE_LOSS_MSE_TEACHER_BLOCKS = 4, /* mean over `blocks` and the hidden size of (h_S − h_T)²
                                         at the blocks' outputs */
  QFORGE_LOSS_MSE_BLOCK_TARGET = 5,   /* in run_block: mean over the hidden size of
                                         (block(x) − target)², x the block's calibration inputs
                                         (the quantized stream), target the unquantized block's
                                         output on x; the only loss of a block's trainer */
  QFORGE_LOSS_MSE_WINDOW_TARGET = 6   /* revision 2, in run: the window of `block_count`
                                         consecutive blocks from blocks[0] (block_count ≥ 1), on
                                         the student's own input x to blocks[0] (no gradient
                                         through the blocks before), against the teacher's same
                                         blocks on that x: mean over real tokens and the hidden
                                         size of (window(x) − window_T(x))² (BRECQ's block
                                         reconstruction, CBQ's cross-block window) */
};

/* Learning-rate schedules (revision 2), carried as int32_t. */
enum {
  QFORGE_SCHEDULE_LINEAR = 0,  /* linear warm-up, then linear decay to 0 (the default) */
  QFORGE_SCHEDULE_COSINE = 1   /* linear warm-up, then a half cosine to 0 (Hugging Face's
                                  get_cosine_schedule_with_warmup) */
};

/* One term of a loss: weight · loss. */
typedef struct qforge_loss_term {
  uint32_t struct_size;    /* sizeof(qforge_loss_term) as compiled by the plugin */
  int32_t kind;            /* QFORGE_LOSS_* */
  double weight;
  double temperature;      /* τ of QFORGE_LOSS_KL_TEACHER (> 0); ignored otherwise */
  const uint32_t* blocks;  /* QFORGE_LOSS_MSE_TEACHER_BLOCKS: block indices; NULL = all */
  uint32_t block_count;
  uint32_t reserved;       /* 0 */
} qforge_loss_term;

/* What a trainer trains on and how it steps. */
typedef struct qforge_train_config {
  uint32_t struct_size;    /* sizeof(qforge_train_config) as compiled by the plugin */
  qforge_bool teacher;     /* load the teacher (QFORGE_LOSS_*_TEACHER_* need it) */
  /* Data: the run's training file cut into sequences of `max_length` tokens
   * (the last one padded, its padding labelled -100), at most `max_samples`
   * of them (0: all), in an order drawn from `shuffle_seed` for each epoch. */
  uint64_t max_length;
  uint64_t max_samples;
  uint64_t batch_size;     /* sequences per micro-batch */
  uint64_t shuffle_seed;   /* also seeds the adapters' dropout */
  /* AdamW (Loshchilov & Hutter 2019) with decoupled weight decay, after
   * clipping the global gradient norm to `max_grad_norm` (0: no clipping),
   * at peak rate `lr` (see set_schedule). */
  double lr;
  double weight_decay;
  double beta1, beta2, eps;
  double max_grad_norm;
  /* > 0: the teacher's logits are computed once, before training, and kept
   * on disk as each token's top `teacher_top_k` log-probabilities at
   * temperature `teacher_cache_temperature` plus the log of the remaining
   * mass (memory-mapped); QFORGE_LOSS_KL_TEACHER then reads them (at that
   * temperature only). 0: the teacher runs beside the student. */
  uint32_t teacher_top_k;
  uint32_t reserved;       /* 0 */
  double teacher_cache_temperature;
  /* Revision 2. Sequences of the run's training data kept out of training
   * for `evaluate` (the last `holdout` of them, before shuffling; in `run`
   * only). 0: none. */
  uint64_t holdout;
} qforge_train_config;

/* ---- plugin side: an adapter on one linear layer, y = base(x) + f(x) ---- */

typedef struct qforge_adapter qforge_adapter; /* private to the plugin */

typedef struct qforge_adapter_vtable {
  uint32_t struct_size;  /* sizeof(qforge_adapter_vtable) as compiled by the plugin */
  uint32_t reserved;     /* 0 */

  /* Trainable tensors: float32, CPU, contiguous, owned by the adapter at the
   * same address until `destroy`. `name` is unique within the adapter (e.g.
   * "lora_A"). The host's optimizer updates `value` in place. */
  uint32_t (*param_count)(const qforge_adapter* adapter);
  qforge_status* (*param)(const qforge_adapter* adapter, uint32_t index, const char** name,
                          const DLTensor** value);

  /* y += f(x). x: [n, in], y: [n, out], float32, contiguous, borrowed.
   * `training` turns dropout (or any other training-only noise) on; `seed`
   * draws it, and the same seed draws the same noise again in `backward`. */
  qforge_status* (*forward)(const qforge_adapter* adapter, qforge_bool training, uint64_t seed,
                            const DLTensor* x, const DLTensor* y);
  /* For the x and seed of an earlier forward (the host passes them again; the
   * adapter keeps no tape): grad_x += grad_y·∂f/∂x, and grads[i] (shaped like
   * param i, float32, host-owned) += ∂L/∂param_i. */
  qforge_status* (*backward)(const qforge_adapter* adapter, qforge_bool training, uint64_t seed,
                             const DLTensor* x, const DLTensor* grad_y, const DLTensor* grad_x,
                             const DLTensor* const* grads);

  /* W += ΔW for a dense [out, in] float32 weight; NULL when f is not linear. */
  qforge_status* (*merge)(const qforge_adapter* adapter, const DLTensor* weight);

  /* How the adapter is saved: a file format the host knows, e.g. "peft.lora/1"
   * (params "lora_A" [r, in] and "lora_B" [out, r]; metadata
   * {"r":…, "lora_alpha":…, "lora_dropout":…}), or NULL when it has none.
   * `metadata_json` receives a JSON object valid until `destroy`. */
  const char* (*export_format)(const qforge_adapter* adapter, const char** metadata_json);

  /* Once, when the host is done with it. */
  void (*destroy)(qforge_adapter* adapter);
} qforge_adapter_vtable;

/* ---- an inference layer's tunable parameters ---- */

#define QFORGE_EXT_LAYER_TUNABLE "qforge.layer.tunable"
#define QFORGE_EXT_LAYER_TUNABLE_REVISION 3

/* Offered by an inference-layer component through its descriptor's
 * get_extension: the continuous parameters of its format that training may
 * tune (the scales and zero points of a grid format), with the backward with
 * respect to them; the codes stay, so the layer stays in its format. Calls
 * on one layer are not concurrent with each other or with its forward. */
typedef struct qforge_layer_tunable {
  uint32_t struct_size;  /* sizeof(qforge_layer_tunable) as compiled by the plugin */
  uint32_t reserved;     /* 0 */
  uint32_t (*param_count)(const struct qforge_layer* layer);
  /* Param `index`: float32, CPU, contiguous, owned by the layer at the same
   * address until `destroy` (e.g. "scales" [groups, out]); the host updates
   * it in place, then calls `update`. */
  qforge_status* (*param)(struct qforge_layer* layer, uint32_t index, const char** name,
                          const DLTensor** value);
  /* grads[i] += ∂L/∂param_i, for the x [n, in] of a forward and its
   * grad_y [n, out]; grads are host-owned, shaped like the params. */
  qforge_status* (*backward_params)(struct qforge_layer* layer, const DLTensor* x,
                                    const DLTensor* grad_y, const DLTensor* const* grads);
  /* From here forward, backward_input and dequantize use the params as they are. */
  qforge_status* (*update)(struct qforge_layer* layer);

  /* Revision 2 (present when struct_size covers it). Rounds the params to
   * what the layer's format stores (e.g. float16 scales, integer zero points
   * in the format's range), writes the rounded values back into the params,
   * computes with them from here, and writes the layer's packed result as it
   * now is through `out`, as a quantizer does: set_format, add_tensor for
   * every tensor of the format, set_dequantized. `original` are the tensors
   * the layer was created from (those the params do not touch are copied):
   * the tuned layer stays in its own format. */
  qforge_status* (*store)(struct qforge_layer* layer, const qforge_named_tensor* const* original,
                          uint32_t original_count, const qforge_quantize_output* out);

  /* Revision 3 (present when struct_size covers it; NULL or UNSUPPORTED when
   * the format has no codes to tune). Makes the format's discrete codes
   * tunable too, by straight-through offsets: from here the layer has more
   * params, named "code_offsets…", 0 at first, through which the host's
   * optimizer moves the codes; backward_params passes ∂L/∂code through the
   * rounding; store writes the codes as they are into the format. An affine
   * grid (AutoRound's signed offsets, Cheng et al. 2023, "Optimize Weight
   * Rounding via Signed Gradient Descent", eq. 2): "code_offsets" [out, in]
   * in grid steps, codes clamp(q₀ + round(v), 0, maxq), ∂L/∂v = scale ·
   * ∂L/∂W where the clamp does not hold, v clipped to [−1, 1] by update (a
   * code moves at most one step). A sign plane S (BinaryConnect's straight-
   * through sign, Courbariaux et al. 2015): "code_offsets.<plane>" shaped
   * like it, S = sign(S₀ + V), ∂L/∂V = ∂L/∂S, V clipped to [−2, 2]. */
  qforge_status* (*tune_codes)(struct qforge_layer* layer);
} qforge_layer_tunable;

/* ---- host side ---- */

typedef struct qforge_trainer qforge_trainer; /* private to the host */

typedef struct qforge_host_train {
  uint32_t struct_size;  /* sizeof(qforge_host_train) as compiled by the host */
  uint32_t reserved;     /* 0 */

  /* A trainer over the whole model (in `run`: the run's training data, the
   * teacher when asked for) or over one block (in `run_block`: the block's
   * calibration inputs and targets; max_length, max_samples and teacher are
   * ignored). One at a time. */
  qforge_status* (*trainer_create)(const qforge_model_services* model,
                                   const qforge_train_config* config, qforge_trainer** trainer);
  /* The adapters stay on the model (they are saved with it). */
  void (*trainer_destroy)(qforge_trainer* trainer);

  /* Hooks `adapter` onto linear `layer` (a name from layer_name). The host owns
   * it from here, even when a status is returned, and calls `destroy` once. */
  qforge_status* (*attach_adapter)(qforge_trainer* trainer, const char* layer,
                                   qforge_adapter* adapter, const qforge_adapter_vtable* vtable);

  /* Micro-batches per epoch. */
  uint64_t (*batch_count)(const qforge_trainer* trainer);
  /* The learning rate of update t (from 0): a linear warm-up from 0 over
   * `warmup_steps` updates, then a linear decay to 0 at `total_steps` (as
   * Hugging Face's linear schedule with warm-up); total_steps = 0 keeps the
   * peak rate after the warm-up. Also what progress and ETA count. */
  qforge_status* (*set_schedule)(qforge_trainer* trainer, uint64_t warmup_steps,
                                 uint64_t total_steps);
  /* Micro-batch `index` of `epoch`: forward, the weighted sum of `terms`
   * times `scale`, backward (gradients accumulate until `step`). values[i]
   * receives term i's unweighted value (may be NULL). */
  qforge_status* (*loss_backward)(qforge_trainer* trainer, uint64_t epoch, uint64_t index,
                                  const qforge_loss_term* const* terms, uint32_t term_count,
                                  double scale, double* values);
  /* One update of every trainable tensor (clip, AdamW at the schedule's rate),
   * then the gradients are zeroed. *lr receives the rate used (may be NULL). */
  qforge_status* (*step)(qforge_trainer* trainer, double* lr);

  /* Checkpoints training after `position` micro-batches (call it after a
   * step): adapters, optimizer state and position go to the run's checkpoint
   * directory, at most every few seconds unless `force`. */
  qforge_status* (*save_state)(qforge_trainer* trainer, uint64_t position, qforge_bool force);
  /* Brings back the state of a checkpoint of this same training (adapters
   * attached as before, same data and settings) when the run resumes;
   * *position receives where to continue (0: from the start). */
  qforge_status* (*restore_state)(qforge_trainer* trainer, uint64_t* position);

  /* Makes the tunable parameters of packed linear `layer` trainable by this
   * trainer (its inference layer must offer QFORGE_EXT_LAYER_TUNABLE); the
   * optimizer updates them with the adapters' tensors. A later trainer of the
   * same post-process trains only the layers it is given; when the
   * post-process returns, the host writes every layer tuned by any of its
   * trainers back into its format. */
  qforge_status* (*tune_layer)(qforge_trainer* trainer, const char* layer);

  /* ---- revision 2 (present when struct_size covers it) ---- */

  /* Also makes the integer codes of packed linear `layer` trainable (its
   * layer's qforge.layer.tunable revision 3 tune_codes; UNSUPPORTED when it
   * has none), at peak rate `lr` under the same schedule. Implies tune_layer. */
  qforge_status* (*tune_layer_codes)(qforge_trainer* trainer, const char* layer, double lr);
  /* The shape of the schedule set_schedule sets: QFORGE_SCHEDULE_*. */
  qforge_status* (*set_schedule_shape)(qforge_trainer* trainer, int32_t shape);
  /* The unweighted value of each term without any gradient, into values[i]:
   * in run_block over every calibration sequence of the block, in run over
   * the held-out sequences (config.holdout ≥ 1). */
  qforge_status* (*evaluate)(qforge_trainer* trainer, const qforge_loss_term* const* terms,
                             uint32_t term_count, double* values);
  /* Keeps a copy of every trainable tensor as it is now (in memory) ... */
  qforge_status* (*keep_state)(qforge_trainer* trainer);
  /* ... and brings the kept copy back (the layers compute with it); the
   * optimizer state stays. INVALID_ARGUMENT when nothing was kept. */
  qforge_status* (*revert_state)(qforge_trainer* trainer);
} qforge_host_train;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_EXT_TRAIN_H */
