/* The trivial copy quantizer shared by the broken test plugins (see
 * copy_quantizer.h). */
#define _POSIX_C_SOURCE 200809L /* sleep() */
#include "copy_quantizer.h"

#include <math.h>
#include <unistd.h>
#include <signal.h>
#include <stdlib.h>

#include <stddef.h>
#include <string.h>

typedef struct copy_block {
  DLManagedTensor managed; /* first: a DLManagedTensor* is a copy_block* */
  const qforge_host* host; /* frees the block */
  int64_t shape[2];
  int64_t strides[2];
} copy_block;

#define COPY_DATA_OFFSET (((sizeof(copy_block) + 63u) / 64u) * 64u)

static void copy_block_delete(DLManagedTensor* self) {
  copy_block* b = (copy_block*)self;
  if (b != NULL) b->host->free(b->host, b);
}

/* A contiguous float32 copy of the 2-D float32 tensor `w` (strides honoured). */
static DLManagedTensor* copy_of(const qforge_host* host, const DLTensor* w) {
  const int64_t rows = w->shape[0], cols = w->shape[1];
  const int64_t s0 = w->strides != NULL ? w->strides[0] : cols;
  const int64_t s1 = w->strides != NULL ? w->strides[1] : 1;
  const char* base = (const char*)w->data + w->byte_offset;
  float* out;
  int64_t r, c;
  copy_block* b = (copy_block*)host->alloc(
      host, COPY_DATA_OFFSET + (uint64_t)rows * (uint64_t)cols * sizeof(float), 64);
  if (b == NULL) return NULL;
  memset(b, 0, sizeof *b);
  b->host = host;
  b->shape[0] = rows;
  b->shape[1] = cols;
  b->strides[0] = cols;
  b->strides[1] = 1;
  b->managed.dl_tensor.data = (char*)b + COPY_DATA_OFFSET;
  b->managed.dl_tensor.device.device_type = kDLCPU;
  b->managed.dl_tensor.device.device_id = 0;
  b->managed.dl_tensor.ndim = 2;
  b->managed.dl_tensor.dtype.code = kDLFloat;
  b->managed.dl_tensor.dtype.bits = 32;
  b->managed.dl_tensor.dtype.lanes = 1;
  b->managed.dl_tensor.shape = b->shape;
  b->managed.dl_tensor.strides = b->strides;
  b->managed.dl_tensor.byte_offset = 0;
  b->managed.manager_ctx = NULL;
  b->managed.deleter = &copy_block_delete;
  out = (float*)b->managed.dl_tensor.data;
  for (r = 0; r < rows; ++r)
    for (c = 0; c < cols; ++c)
      memcpy(&out[r * cols + c], base + (r * s0 + c * s1) * (int64_t)sizeof(float),
             sizeof(float));
  return &b->managed;
}

static qforge_status* copy_quantize(const qforge_host* host, const qforge_quantize_input* input,
                                    const qforge_quantize_output* output) {
  const DLTensor* w = input->weight;
  DLManagedTensor* packed;
  DLManagedTensor* deq;
  qforge_status* st;
  if (w == NULL || w->ndim != 2 || w->shape == NULL || w->shape[0] <= 0 || w->shape[1] <= 0 ||
      w->data == NULL)
    return host->status_create(host, QFORGE_STATUS_INVALID_ARGUMENT,
                               "copy: the weight must be a non-empty 2-D tensor");
  if (w->dtype.code != kDLFloat || w->dtype.bits != 32 || w->dtype.lanes != 1 ||
      w->device.device_type != kDLCPU)
    return host->status_create(host, QFORGE_STATUS_UNSUPPORTED,
                               "copy: the weight must be float32 on the CPU");
  packed = copy_of(host, w);
  deq = copy_of(host, w);
  if (packed == NULL || deq == NULL) {
    if (packed != NULL) packed->deleter(packed);
    if (deq != NULL) deq->deleter(deq);
    return host->status_create(host, QFORGE_STATUS_OUT_OF_MEMORY, "copy: out of memory");
  }
#ifdef QF_TEST_COPY_CRASH
  /* the defect of broken/crash_weights.c: on every layer, or only on those
   * whose name contains $QF_TEST_CRASH_AT when it is set */
  if (getenv("QF_TEST_CRASH_AT") == NULL || strstr(input->layer_name, getenv("QF_TEST_CRASH_AT")))
    raise(SIGSEGV);
#endif
#ifdef QF_TEST_COPY_HANG
  for (;;) sleep(1); /* the defect of broken/hang_weights.c: never polls is_cancelled */
#endif
#ifdef QF_TEST_COPY_EXIT
  exit(0); /* the defect of broken/exit_weights.c */
#endif
#ifdef QF_TEST_COPY_ROUND
  { /* a crude but real quantizer (the inputs probe): the dequantized weight is
     * rounded to multiples of 1/16, so the quantized stream departs from the
     * full-precision one */
    float* d = (float*)deq->dl_tensor.data;
    int64_t k;
    for (k = 0; k < w->shape[0] * w->shape[1]; ++k) d[k] = (float)(floor(d[k] * 16.0 + 0.5) / 16.0);
  }
#endif
#ifdef QF_TEST_COPY_NAN
  ((float*)deq->dl_tensor.data)[0] = NAN; /* the defect of broken/nan_weights.c */
#endif
  st = output->set_format(output, QF_TEST_COPY_FORMAT, "{}");
  if (st != NULL) {
    packed->deleter(packed);
    deq->deleter(deq);
    return st;
  }
  st = output->add_tensor(output, "weight", packed); /* ownership moves, status or not */
  if (st != NULL) {
    deq->deleter(deq);
    return st;
  }
  return output->set_dequantized(output, deq);
}

static const char* const copy_formats[] = {QF_TEST_COPY_FORMAT, NULL};

const qforge_quantizer qf_test_copy_quantizer = {sizeof(qforge_quantizer), 0, copy_formats,
                                                 &copy_quantize};
