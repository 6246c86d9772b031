/* A qforge plugin written in plain C99, with no C++ and no LibTorch: proof
 * that the C ABI v1 is enough to write a real quantizer.
 *
 * Component "org.qforge.test.sign": 1-bit sign binarization with one scale
 * per output row, as in XNOR-Net (M. Rastegari, V. Ordonez, J. Redmon,
 * A. Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional
 * Neural Networks", ECCV 2016, Eq. 4): the best approximation W_r ≈ α_r·B_r
 * with B_r ∈ {-1,+1}^n in the least-squares sense is
 *
 *     B_r = sign(W_r),   α_r = ‖W_r‖₁ / n = mean |W_r|.
 *
 * The optional parameter `alpha_scale` multiplies α (1.0 reproduces the
 * paper). sign(0) is taken as +1.
 *
 * Packed format "org.qforge.test.sign/1":
 *   signs  uint8   [out, in]  1 for +1, 0 for -1
 *   alpha  float32 [out]      α_r (alpha_scale already applied)
 *   metadata {"method":"xnor-sign","bits":1,"alpha_scale":s,
 *             "out_features":m,"in_features":n}
 * and the dequantized weight is alpha[r] * (signs[r][c] ? +1 : -1).
 *
 * Every tensor it hands to the host is one block from host->alloc, released
 * by the DLManagedTensor deleter with host->free of the host kept from init.
 *
 * Test instrumentation: qforge_test_c_plugin_calls() (also exported) lets the
 * registry tests check that init and deinit are each called as promised. */
#include <qforge/qforge.h>

#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define SIGN_ID "org.qforge.test.sign"
#define SIGN_FORMAT "org.qforge.test.sign/1"
#define ALPHA_SCALE_MIN 0.5
#define ALPHA_SCALE_MAX 2.0

/* The host handed to init; valid until deinit returns. init/deinit run on the
 * main thread only; they are reference-counted so that two registries in one
 * process (each calling init and deinit once) do not pull the host away from
 * each other. */
static const qforge_host* g_host = NULL;
static int g_init_refs = 0;
static int g_init_calls = 0;
static int g_deinit_calls = 0;

/* Does a struct that reports `struct_size` contain the field ending at `end`? */
#define HAS_FIELD(ptr, type, field) \
  ((ptr)->struct_size >= offsetof(type, field) + sizeof(((type*)0)->field))

static qforge_status* fail(const qforge_host* host, int32_t code, const char* fmt_text,
                           const char* detail) {
  char message[256];
  snprintf(message, sizeof message, fmt_text, detail);
  return host->status_create(host, code, message);
}

/* ---- tensors owned by the host once handed over ---- */

/* One host allocation per tensor: this header, then shape and strides, then
 * the data at a 64-byte boundary. */
typedef struct sign_block {
  DLManagedTensor managed; /* first, so a DLManagedTensor* is a sign_block* */
  int64_t shape[2];
  int64_t strides[2];
} sign_block;

#define DATA_OFFSET (((sizeof(sign_block) + 63u) / 64u) * 64u)

static void sign_block_delete(DLManagedTensor* self) {
  /* The host calls this exactly once, before deinit. */
  if (self != NULL && g_host != NULL) g_host->free(g_host, self);
}

/* A new contiguous CPU tensor of `ndim` (1 or 2) dimensions, or NULL. */
static DLManagedTensor* new_tensor(int32_t ndim, const int64_t* shape, uint8_t code,
                                   uint8_t bits) {
  uint64_t elements = 1;
  uint64_t bytes;
  int32_t d;
  sign_block* b;
  for (d = 0; d < ndim; ++d) {
    if (shape[d] < 0 || (shape[d] != 0 && elements > UINT64_MAX / (uint64_t)shape[d]))
      return NULL;
    elements *= (uint64_t)shape[d];
  }
  if (elements > (UINT64_MAX - DATA_OFFSET) / (bits / 8u)) return NULL;
  bytes = DATA_OFFSET + elements * (bits / 8u);
  b = (sign_block*)g_host->alloc(g_host, bytes, 64);
  if (b == NULL) return NULL;
  memset(b, 0, sizeof *b);
  b->managed.dl_tensor.data = (char*)b + DATA_OFFSET;
  b->managed.dl_tensor.device.device_type = kDLCPU;
  b->managed.dl_tensor.device.device_id = 0;
  b->managed.dl_tensor.ndim = ndim;
  b->managed.dl_tensor.dtype.code = code;
  b->managed.dl_tensor.dtype.bits = bits;
  b->managed.dl_tensor.dtype.lanes = 1;
  b->shape[0] = shape[0];
  b->strides[0] = ndim == 2 ? shape[1] : 1;
  if (ndim == 2) {
    b->shape[1] = shape[1];
    b->strides[1] = 1;
  }
  b->managed.dl_tensor.shape = b->shape;
  b->managed.dl_tensor.strides = b->strides;
  b->managed.dl_tensor.byte_offset = 0;
  b->managed.manager_ctx = NULL;
  b->managed.deleter = &sign_block_delete;
  return &b->managed;
}

/* ---- the quantizer ---- */

static qforge_status* read_alpha_scale(const qforge_host* host,
                                       const qforge_quantize_input* input, double* scale) {
  uint32_t k;
  *scale = 1.0; /* the schema default, should the host not pass it */
  for (k = 0; k < input->param_count; ++k) {
    const qforge_param_value* v = input->params[k];
    if (v == NULL || v->name == NULL || strcmp(v->name, "alpha_scale") != 0) continue;
    if (v->type != QFORGE_PARAM_FLOAT || !HAS_FIELD(v, qforge_param_value, f))
      return fail(host, QFORGE_STATUS_INVALID_ARGUMENT, "parameter '%s' is not a float",
                  "alpha_scale");
    *scale = v->f;
  }
  /* The host validated it against the schema; check again, the ABI is a trust
   * boundary in both directions. */
  if (!(*scale >= ALPHA_SCALE_MIN && *scale <= ALPHA_SCALE_MAX))
    return fail(host, QFORGE_STATUS_INVALID_ARGUMENT,
                "parameter '%s' must be a number in [0.5, 2]", "alpha_scale");
  return NULL;
}

static qforge_status* sign_quantize(const qforge_host* host, const qforge_quantize_input* input,
                                    const qforge_quantize_output* output) {
  const DLTensor* w;
  int64_t rows, cols, s0, s1, r, c;
  const char* base;
  double scale, alpha_mean = 0.0;
  DLManagedTensor* signs_t;
  DLManagedTensor* alpha_t;
  DLManagedTensor* deq_t;
  uint8_t* signs;
  float* alpha;
  float* deq;
  char metadata[256];
  qforge_status* st;
  int64_t shape1[1];

  if (host == NULL) return NULL; /* cannot report anything without a host */
  if (g_host == NULL)
    return host->status_create(host, QFORGE_STATUS_INTERNAL,
                               SIGN_ID ": quantize called before init");
  if (input == NULL || output == NULL ||
      !HAS_FIELD(input, qforge_quantize_input, param_count) ||
      !HAS_FIELD(output, qforge_quantize_output, set_dequantized))
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                               SIGN_ID ": input or output table missing or too small");
  w = input->weight;
  if (w == NULL)
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT, SIGN_ID ": no weight");
  if (w->ndim != 2 || w->shape == NULL)
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                               SIGN_ID ": the weight must be a 2-D [out, in] tensor");
  if (w->dtype.code != kDLFloat || w->dtype.bits != 32 || w->dtype.lanes != 1)
    return host->status_create(host, QFORGE_STATUS_UNSUPPORTED,
                               SIGN_ID ": the weight must be float32");
  if (w->device.device_type != kDLCPU)
    return host->status_create(host, QFORGE_STATUS_UNSUPPORTED,
                               SIGN_ID ": the weight must be on the CPU");
  rows = w->shape[0];
  cols = w->shape[1];
  if (rows <= 0 || cols <= 0 || w->data == NULL)
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                               SIGN_ID ": the weight is empty");
  if (rows > INT64_MAX / cols)
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                               SIGN_ID ": the weight is too large");
  /* qforge always fills strides; plain DLPack allows NULL for compact. */
  s0 = w->strides != NULL ? w->strides[0] : cols;
  s1 = w->strides != NULL ? w->strides[1] : 1;
  base = (const char*)w->data + w->byte_offset;

  st = read_alpha_scale(host, input, &scale);
  if (st != NULL) return st;

  signs_t = new_tensor(2, w->shape, kDLUInt, 8);
  shape1[0] = rows;
  alpha_t = new_tensor(1, shape1, kDLFloat, 32);
  deq_t = new_tensor(2, w->shape, kDLFloat, 32);
  if (signs_t == NULL || alpha_t == NULL || deq_t == NULL) {
    if (signs_t != NULL) signs_t->deleter(signs_t);
    if (alpha_t != NULL) alpha_t->deleter(alpha_t);
    if (deq_t != NULL) deq_t->deleter(deq_t);
    return host->status_create(host, QFORGE_STATUS_OUT_OF_MEMORY,
                               SIGN_ID ": out of memory");
  }
  signs = (uint8_t*)signs_t->dl_tensor.data;
  alpha = (float*)alpha_t->dl_tensor.data;
  deq = (float*)deq_t->dl_tensor.data;

  for (r = 0; r < rows; ++r) {
    double sum_abs = 0.0;
    float a;
    if (host->is_cancelled(host)) {
      st = host->status_create(host, QFORGE_STATUS_CANCELLED, SIGN_ID ": cancelled");
      goto release;
    }
    for (c = 0; c < cols; ++c) {
      float x; /* memcpy: byte_offset need not keep floats aligned */
      memcpy(&x, base + (r * s0 + c * s1) * (int64_t)sizeof(float), sizeof x);
      if (!isfinite(x)) {
        st = host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                                 SIGN_ID ": the weight has a NaN or infinite value");
        goto release;
      }
      sum_abs += fabs((double)x);
      signs[r * cols + c] = x >= 0.0f ? 1u : 0u;
    }
    a = (float)(scale * sum_abs / (double)cols); /* XNOR-Net Eq. 4, scaled */
    alpha[r] = a;
    alpha_mean += a;
    for (c = 0; c < cols; ++c) deq[r * cols + c] = signs[r * cols + c] ? a : -a;
  }
  host->progress(host, "sign rows", (uint64_t)rows, (uint64_t)rows);

  {
    /* printf follows LC_NUMERIC; JSON wants a '.' whatever the host's locale. */
    char number[32];
    char* p;
    snprintf(number, sizeof number, "%.17g", scale);
    for (p = number; *p != '\0'; ++p)
      if (*p == ',') *p = '.';
    snprintf(metadata, sizeof metadata,
             "{\"method\":\"xnor-sign\",\"bits\":1,\"alpha_scale\":%s,"
             "\"out_features\":%" PRId64 ",\"in_features\":%" PRId64 "}",
             number, rows, cols);
  }
  st = output->set_format(output, SIGN_FORMAT, metadata);
  if (st != NULL) goto release;
  /* From here on ownership moves to the host with each call, status or not. */
  st = output->add_tensor(output, "signs", signs_t);
  signs_t = NULL;
  if (st != NULL) goto release;
  st = output->add_tensor(output, "alpha", alpha_t);
  alpha_t = NULL;
  if (st != NULL) goto release;
  st = output->set_dequantized(output, deq_t);
  deq_t = NULL;
  if (st != NULL) goto release;
  if (HAS_FIELD(output, qforge_quantize_output, set_metric) && output->set_metric != NULL)
    st = output->set_metric(output, "mean_alpha", alpha_mean / (double)rows);
  return st;

release:
  if (signs_t != NULL) signs_t->deleter(signs_t);
  if (alpha_t != NULL) alpha_t->deleter(alpha_t);
  if (deq_t != NULL) deq_t->deleter(deq_t);
  return st;
}

/* ---- description ---- */

static const char* const sign_formats[] = {SIGN_FORMAT, NULL};

static const qforge_quantizer sign_vtable = {
    sizeof(qforge_quantizer), 0, sign_formats, &sign_quantize};

static const qforge_param_desc alpha_scale_param = {
    sizeof(qforge_param_desc),
    QFORGE_PARAM_FLOAT,
    "alpha_scale",
    "multiplier on the per-row scale alpha = mean|W_r| (1 = XNOR-Net)",
    "1.0",
    NULL,
    ALPHA_SCALE_MIN,
    ALPHA_SCALE_MAX,
    QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX,
    0};

static const qforge_param_desc* const sign_params[] = {&alpha_scale_param};

static const char* const sign_features[] = {"data-free", "test", NULL};

static const qforge_component_desc sign_component = {
    sizeof(qforge_component_desc),
    QFORGE_COMPONENT_QUANTIZER,
    0, /* min_host_minor */
    0,
    SIGN_ID,
    "Sign binarization (test)",
    "1.0.0",
    "qforge tests",
    "MIT",
    "1-bit sign binarization W ~ alpha_r * sign(W) with alpha_r = mean|W_r| per output "
    "row (Rastegari et al., XNOR-Net, ECCV 2016, Eq. 4). A plain-C test plugin.",
    sign_features,
    sign_params,
    1,
    0,
    &sign_vtable,
    NULL};

/* ---- entry ---- */

static qforge_status* plugin_init(const qforge_host* host) {
  ++g_init_calls;
  if (host == NULL) return NULL; /* nothing to report with; the host is broken */
  if (host->abi_major != QFORGE_ABI_MAJOR || !HAS_FIELD(host, qforge_host, get_extension))
    return HAS_FIELD(host, qforge_host, status_create)
               ? host->status_create(host, QFORGE_STATUS_UNSUPPORTED,
                                     "qforge-test-c-plugin needs a v1 host table")
               : NULL;
  if (g_init_refs > 0 && g_host != host)
    return host->status_create(host, QFORGE_STATUS_UNSUPPORTED,
                               "qforge-test-c-plugin: already initialised by another host");
  g_host = host;
  ++g_init_refs;
  host->log(host, QFORGE_LOG_DEBUG, "qforge-test-c-plugin: initialised");
  return NULL;
}

static void plugin_deinit(void) {
  ++g_deinit_calls;
  if (g_init_refs > 0 && --g_init_refs == 0) g_host = NULL;
}

static uint32_t plugin_component_count(void) { return 1; }

static const qforge_component_desc* plugin_get_component(uint32_t index) {
  return index == 0 ? &sign_component : NULL;
}

static const qforge_plugin_entry plugin_entry = {
    sizeof(qforge_plugin_entry),
    QFORGE_ABI_MAJOR,
    QFORGE_ABI_MINOR,
    0,
    "qforge-test-c-plugin",
    "1.0.0",
    &plugin_init,
    &plugin_deinit,
    &plugin_component_count,
    &plugin_get_component};

QFORGE_EXTERN_C QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void) {
  return &plugin_entry;
}

/* Test instrumentation (not part of the ABI): how often init and deinit ran. */
QFORGE_EXTERN_C QFORGE_EXPORT void qforge_test_c_plugin_calls(int* init_calls,
                                                             int* deinit_calls) {
  *init_calls = g_init_calls;
  *deinit_calls = g_deinit_calls;
}
