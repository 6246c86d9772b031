/* A post-process written in plain C99: proof that ABI 1.1's model services
 * and the host extension "qforge.host.train" (qforge/ext/train.h) are enough
 * to train through the C ABI, as c_plugin.c is for quantizers.
 *
 * Component "org.qforge.test.rank1-lora" (min_host_minor 1): a rank-1 LoRA
 * adapter (Hu et al. 2021, Eq. 3 with r = 1) on each linear whose name ends
 * with `target`:
 *
 *     y += s·b·(aᵀx),   a ∈ ℝ^in, b ∈ ℝ^out, s = alpha,
 *
 * a drawn from a fixed sequence, b = 0, trained for `steps` updates of the
 * next-token cross-entropy. It also reads the model through the services
 * (layer names and shapes, block count, a norm read back and written back
 * unchanged) and fails unless the loss went down, so a run that succeeds has
 * trained. Its adapters export as "peft.lora/1" (lora_A = aᵀ [1, in], lora_B
 * = b [out, 1], r = 1, lora_alpha = alpha) and merge as W += s·b·aᵀ.
 *
 * It also has the per-block hook (run_block): inside `qforge quantize` it
 * trains each block's adapters on the block's output error against the
 * unquantized block (QFORGE_LOSS_MSE_BLOCK_TARGET), again failing unless
 * that error went down.
 *
 * Every adapter is one host allocation, freed by `destroy`. */
#include <qforge/qforge.h>
#include <qforge/ext/train.h>

#include <stdio.h>
#include <string.h>

#define RANK1_ID "org.qforge.test.rank1-lora"

static const qforge_host* g_host = NULL;

static qforge_status* fail(int32_t code, const char* message) {
  return g_host->status_create(g_host, code, message);
}

/* ---- the adapter ---- */

typedef struct rank1 {
  int64_t out, in;
  double s;
  float* a;  /* [in]  = lora_A [1, in] */
  float* b;  /* [out] = lora_B [out, 1] */
  int64_t a_shape[2], b_shape[2];
  DLTensor a_tensor, b_tensor;
  char metadata[96];
} rank1;

static float* f32(const DLTensor* t) { return (float*)((char*)t->data + t->byte_offset); }

static int is_f32_matrix(const DLTensor* t, int64_t cols) {
  return t->ndim == 2 && t->dtype.code == kDLFloat && t->dtype.bits == 32 &&
         t->device.device_type == kDLCPU && t->shape[1] == cols &&
         (t->strides == NULL || (t->strides[1] == 1 && t->strides[0] == cols));
}

static uint32_t rank1_param_count(const qforge_adapter* adapter) {
  (void)adapter;
  return 2;
}

static qforge_status* rank1_param(const qforge_adapter* adapter, uint32_t index, const char** name,
                                  const DLTensor** value) {
  const rank1* r = (const rank1*)adapter;
  if (index > 1) return fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": no such param");
  *name = index == 0 ? "lora_A" : "lora_B";
  *value = index == 0 ? &r->a_tensor : &r->b_tensor;
  return NULL;
}

/* y[n] += s·(a·x[n])·b */
static qforge_status* rank1_forward(const qforge_adapter* adapter, qforge_bool training,
                                    uint64_t seed, const DLTensor* x, const DLTensor* y) {
  const rank1* r = (const rank1*)adapter;
  int64_t n, i, o;
  (void)training;
  (void)seed;
  if (!is_f32_matrix(x, r->in) || !is_f32_matrix(y, r->out) || x->shape[0] != y->shape[0])
    return fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": forward: bad tensor shapes");
  for (n = 0; n < x->shape[0]; ++n) {
    const float* xn = f32(x) + n * r->in;
    float* yn = f32(y) + n * r->out;
    double t = 0;
    for (i = 0; i < r->in; ++i) t += (double)r->a[i] * xn[i];
    for (o = 0; o < r->out; ++o) yn[o] += (float)(r->s * t * r->b[o]);
  }
  return NULL;
}

/* With t = a·x and u = s·(b·g):  ∂L/∂b += s·t·g,  ∂L/∂a += u·x,  ∂L/∂x += u·a. */
static qforge_status* rank1_backward(const qforge_adapter* adapter, qforge_bool training,
                                     uint64_t seed, const DLTensor* x, const DLTensor* grad_y,
                                     const DLTensor* grad_x, const DLTensor* const* grads) {
  const rank1* r = (const rank1*)adapter;
  float* ga;
  float* gb;
  int64_t n, i, o;
  (void)training;
  (void)seed;
  if (!is_f32_matrix(x, r->in) || !is_f32_matrix(grad_y, r->out) || !is_f32_matrix(grad_x, r->in))
    return fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": backward: bad tensor shapes");
  ga = f32(grads[0]);
  gb = f32(grads[1]);
  for (n = 0; n < x->shape[0]; ++n) {
    const float* xn = f32(x) + n * r->in;
    const float* gn = f32(grad_y) + n * r->out;
    float* gxn = f32(grad_x) + n * r->in;
    double t = 0, u = 0;
    for (i = 0; i < r->in; ++i) t += (double)r->a[i] * xn[i];
    for (o = 0; o < r->out; ++o) u += (double)r->b[o] * gn[o];
    u *= r->s;
    for (o = 0; o < r->out; ++o) gb[o] += (float)(r->s * t * gn[o]);
    for (i = 0; i < r->in; ++i) {
      ga[i] += (float)(u * xn[i]);
      gxn[i] += (float)(u * r->a[i]);
    }
  }
  return NULL;
}

/* W += s·b·aᵀ */
static qforge_status* rank1_merge(const qforge_adapter* adapter, const DLTensor* weight) {
  const rank1* r = (const rank1*)adapter;
  int64_t o, i;
  if (!is_f32_matrix(weight, r->in) || weight->shape[0] != r->out)
    return fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": merge: bad weight shape");
  for (o = 0; o < r->out; ++o)
    for (i = 0; i < r->in; ++i) f32(weight)[o * r->in + i] += (float)(r->s * r->b[o] * r->a[i]);
  return NULL;
}

static const char* rank1_export(const qforge_adapter* adapter, const char** metadata) {
  *metadata = ((const rank1*)adapter)->metadata;
  return "peft.lora/1";
}

static void rank1_destroy(qforge_adapter* adapter) { g_host->free(g_host, adapter); }

static const qforge_adapter_vtable rank1_vtable = {
    sizeof(qforge_adapter_vtable), 0, &rank1_param_count, &rank1_param, &rank1_forward,
    &rank1_backward, &rank1_merge, &rank1_export, &rank1_destroy};

static void set_vector(DLTensor* t, float* data, int64_t* shape, int64_t rows, int64_t cols) {
  memset(t, 0, sizeof *t);
  shape[0] = rows;
  shape[1] = cols;
  t->data = data;
  t->device.device_type = kDLCPU;
  t->ndim = 2;
  t->dtype.code = kDLFloat;
  t->dtype.bits = 32;
  t->dtype.lanes = 1;
  t->shape = shape;
}

static rank1* rank1_new(int64_t out, int64_t in, double alpha, uint32_t layer) {
  const uint64_t bytes = sizeof(rank1) + (uint64_t)(in + out) * sizeof(float);
  rank1* r = (rank1*)g_host->alloc(g_host, bytes, 64);
  int64_t i;
  uint32_t state = 2463534242u ^ (layer * 2654435761u);
  if (r == NULL) return NULL;
  memset(r, 0, (size_t)bytes);
  r->out = out;
  r->in = in;
  r->s = alpha;
  r->a = (float*)(r + 1);
  r->b = r->a + in;
  for (i = 0; i < in; ++i) { /* xorshift32, uniform in ±1/√in (roughly) */
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    r->a[i] = (float)(((double)state / 4294967296.0 - 0.5) * 2.0 / 8.0);
  }
  set_vector(&r->a_tensor, r->a, r->a_shape, 1, in);
  set_vector(&r->b_tensor, r->b, r->b_shape, out, 1);
  snprintf(r->metadata, sizeof r->metadata, "{\"r\": 1, \"lora_alpha\": %.17g, \"lora_dropout\": 0}",
           alpha);
  return r;
}

/* ---- the post-process ---- */

static const qforge_param_value* param(const qforge_param_value* const* params, uint32_t count,
                                       const char* name) {
  uint32_t k;
  for (k = 0; k < count; ++k)
    if (strcmp(params[k]->name, name) == 0) return params[k];
  return NULL;
}

static int ends_with(const char* s, const char* suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Reads the model through the services: names, shapes, blocks, and a norm
 * read and written back. */
static qforge_status* inspect(const qforge_model_services* model) {
  qforge_status* s;
  DLManagedTensor* norm = NULL;
  int64_t out = 0, in = 0;
  uint32_t block = 0;
  const char* format = NULL;
  if (model->struct_size < sizeof(qforge_model_services))
    return fail(QFORGE_STATUS_UNSUPPORTED, RANK1_ID ": the model services are older than 1.1");
  if (model->layer_count(model) == 0 || model->block_count(model) == 0)
    return fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": an empty model");
  s = model->layer_info(model, 0, &out, &in, &block, &format);
  if (s != NULL) return s;
  if (out <= 0 || in <= 0 || block != 0 || format == NULL)
    return fail(QFORGE_STATUS_INTERNAL, RANK1_ID ": layer_info of layer 0 is wrong");
  s = model->get_parameter(model, "model.layers.0.input_layernorm.weight", &norm);
  if (s != NULL) return s;
  if (norm->dl_tensor.ndim != 1 || norm->dl_tensor.shape[0] != in) {
    norm->deleter(norm);
    return fail(QFORGE_STATUS_INTERNAL, RANK1_ID ": the norm has the wrong shape");
  }
  s = model->set_parameter(model, "model.layers.0.input_layernorm.weight", &norm->dl_tensor);
  norm->deleter(norm);
  return s;
}

/* Attaches the adapters, then trains `steps` updates on `loss` and fails
 * unless the first epoch's mean loss went down by the last epoch. */
static qforge_status* train(const qforge_host* host, const qforge_model_services* model,
                            const qforge_param_value* const* params, uint32_t count, int32_t loss,
                            const char* what) {
  const qforge_host_train* t;
  qforge_train_config cfg;
  qforge_trainer* trainer = NULL;
  qforge_loss_term term;
  const qforge_loss_term* terms[1];
  qforge_status* s = NULL;
  const char* target = param(params, count, "target")->s;
  const double alpha = param(params, count, "alpha")->f;
  const uint64_t steps = (uint64_t)param(params, count, "steps")->i;
  uint64_t batches, k, position = 0;
  uint32_t i, attached = 0;
  double first = 0, last = 0;
  char message[200];

  t = (const qforge_host_train*)host->get_extension(host, QFORGE_EXT_HOST_TRAIN,
                                                    QFORGE_EXT_HOST_TRAIN_REVISION);
  if (t == NULL) return fail(QFORGE_STATUS_UNSUPPORTED, RANK1_ID ": the host offers no training");

  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.max_length = 128;
  cfg.max_samples = 4;
  cfg.batch_size = 1;
  cfg.shuffle_seed = 7;
  cfg.lr = param(params, count, "lr")->f;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.999;
  cfg.eps = 1e-8;
  cfg.max_grad_norm = 1.0;
  if ((s = t->trainer_create(model, &cfg, &trainer)) != NULL) return s;

  for (i = 0; i < model->layer_count(model) && s == NULL; ++i) {
    const char* name = model->layer_name(model, i);
    int64_t out = 0, in = 0;
    uint32_t block = 0;
    const char* format = NULL;
    rank1* r;
    if (!ends_with(name, target)) continue;
    if ((s = model->layer_info(model, i, &out, &in, &block, &format)) != NULL) break;
    if ((r = rank1_new(out, in, alpha, i + 100u * block)) == NULL) {
      s = fail(QFORGE_STATUS_OUT_OF_MEMORY, RANK1_ID ": out of memory");
      break;
    }
    s = t->attach_adapter(trainer, name, (qforge_adapter*)r, &rank1_vtable);
    ++attached;
  }
  if (s == NULL && attached == 0) s = fail(QFORGE_STATUS_INVALID_ARGUMENT, RANK1_ID ": no layer matches target");
  batches = t->batch_count(trainer);
  if (s == NULL) s = t->set_schedule(trainer, 0, steps);
  if (s == NULL) s = t->restore_state(trainer, &position);

  memset(&term, 0, sizeof term);
  term.struct_size = sizeof term;
  term.kind = loss;
  term.weight = 1.0;
  terms[0] = &term;
  for (k = position; k < steps && s == NULL; ++k) {
    double value = 0;
    s = t->loss_backward(trainer, k / batches, k % batches, terms, 1, 1.0, &value);
    if (s == NULL) s = t->step(trainer, NULL);
    if (s == NULL) s = t->save_state(trainer, k + 1, host->is_cancelled(host));
    if (k < batches) first += value / (double)batches;          /* the first epoch's mean */
    if (k + batches >= steps) last += value / (double)batches;  /* the last epoch's */
    if (s == NULL && host->is_cancelled(host)) s = fail(QFORGE_STATUS_CANCELLED, RANK1_ID ": cancelled");
  }
  t->trainer_destroy(trainer);
  if (s != NULL) return s;
  snprintf(message, sizeof message,
           RANK1_ID " %s: %u adapters, mean %s %.6g (first epoch) -> %.6g (last) over %llu steps",
           what, attached, loss == QFORGE_LOSS_CROSS_ENTROPY ? "cross-entropy" : "block-target-mse",
           first, last, (unsigned long long)steps);
  host->log(host, QFORGE_LOG_INFO, message);
  /* The same sequences come back each epoch: a trained adapter lowers their mean loss. */
  if (position == 0 && steps >= 2 * batches && !(last < first))
    return fail(QFORGE_STATUS_INTERNAL, RANK1_ID ": the loss did not go down");
  return NULL;
}

/* The whole model: next-token cross-entropy on the run's training data. */
static qforge_status* rank1_run(const qforge_host* host, const qforge_model_services* model,
                                const qforge_param_value* const* params, uint32_t count) {
  qforge_status* s = inspect(model);
  if (s != NULL) return s;
  return train(host, model, params, count, QFORGE_LOSS_CROSS_ENTROPY, "model");
}

/* One block inside `qforge quantize`: its output against the unquantized block's. */
static qforge_status* rank1_run_block(const qforge_host* host, const qforge_model_services* model,
                                      uint32_t block, const qforge_param_value* const* params,
                                      uint32_t count) {
  char what[32];
  snprintf(what, sizeof what, "block %u", block);
  return train(host, model, params, count, QFORGE_LOSS_MSE_BLOCK_TARGET, what);
}

static const qforge_postprocess rank1_table = {sizeof(qforge_postprocess), 0, &rank1_run,
                                                &rank1_run_block};

/* ---- description ---- */

static const qforge_param_desc p_target = {sizeof(qforge_param_desc), QFORGE_PARAM_STRING, "target",
                                           "linears whose name ends with this get an adapter",
                                           "mlp.down_proj", NULL, 0, 0, 0, 0};
static const qforge_param_desc p_alpha = {sizeof(qforge_param_desc), QFORGE_PARAM_FLOAT, "alpha",
                                          "scale s of the adapter", "1.0", NULL, 1e-6, 1e6,
                                          QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX, 0};
static const qforge_param_desc p_lr = {sizeof(qforge_param_desc), QFORGE_PARAM_FLOAT, "lr",
                                       "learning rate", "0.01", NULL, 0, 10,
                                       QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX, 0};
static const qforge_param_desc p_steps = {sizeof(qforge_param_desc), QFORGE_PARAM_INT, "steps",
                                          "updates", "12", NULL, 1, 100000,
                                          QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX, 0};
static const qforge_param_desc* const rank1_params[] = {&p_target, &p_alpha, &p_lr, &p_steps};
static const char* const rank1_features[] = {"trains", "adapter", NULL};

static const qforge_component_desc rank1_component = {
    sizeof(qforge_component_desc), QFORGE_COMPONENT_POSTPROCESS, 1 /* min_host_minor */, 0,
    RANK1_ID, "Rank-1 LoRA (C test)", "1.0.0", "qforge tests", "MIT",
    "A rank-1 LoRA adapter trained with the next-token loss through qforge.host.train, "
    "written in plain C (Hu et al. 2021).",
    rank1_features, rank1_params, 4, 0, &rank1_table, NULL};

static qforge_status* plugin_init(const qforge_host* host) {
  g_host = host;
  return NULL;
}
static uint32_t component_count(void) { return 1; }
static const qforge_component_desc* get_component(uint32_t index) {
  return index == 0 ? &rank1_component : NULL;
}

static const qforge_plugin_entry plugin_entry = {
    sizeof(qforge_plugin_entry), QFORGE_ABI_MAJOR, QFORGE_ABI_MINOR, 0, "qforge-test-c-postprocess",
    "1.0.0", &plugin_init, NULL, &component_count, &get_component};

QFORGE_EXTERN_C QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &plugin_entry; }
