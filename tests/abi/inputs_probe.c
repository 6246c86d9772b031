/* A working quantizer (the copy quantizer of broken/copy_quantizer.c) that
 * reports, as metrics, which optional inputs the host gave it and whether
 * they are what quantizer.h says (tests/pipeline/inputs_test.sh). Built twice:
 * with QF_PROBE_ASKS_ALL it declares needs-inputs-q, needs-inputs-fp and
 * needs-act-stats; without, none of them.
 *
 * The copy is rounded to multiples of 1/16 (QF_TEST_COPY_ROUND).
 * Metrics: has_hessian, has_inputs_q, has_inputs_fp, has_act_stats (0 or 1);
 * with inputs_q: rows_match (rows == nsamples), hessian_error
 * (max |H - 2/n XᵀX| / max |H|), act_stats_error (max |act_stats - mean |x||);
 * with both streams: stream_difference (max |x_fp - x_q|). */
#include <math.h>

#include "broken/copy_quantizer.h"

static const float* at_f32(const DLTensor* t) {
  return (const float*)((const char*)t->data + t->byte_offset);
}

/* Contiguous float32 [rows, cols] of the expected shape, or NULL. */
static const float* matrix(const DLTensor* t, int64_t rows, int64_t cols) {
  if (t == NULL || t->ndim != 2 || t->dtype.code != kDLFloat || t->dtype.bits != 32) return NULL;
  if ((rows >= 0 && t->shape[0] != rows) || t->shape[1] != cols) return NULL;
  if (t->strides != NULL && (t->strides[1] != 1 || t->strides[0] != cols)) return NULL;
  return at_f32(t);
}

static qforge_status* metric(const qforge_quantize_output* out, const char* name, double v) {
  return out->set_metric(out, name, v);
}

static qforge_status* probe_quantize(const qforge_host* host, const qforge_quantize_input* in,
                                     const qforge_quantize_output* out) {
  const int64_t cols = in->weight->shape[1];
  const int64_t n = (int64_t)in->nsamples;
  const float* xq = in->inputs_q ? matrix(in->inputs_q, n, cols) : NULL;
  const float* xf = in->inputs_fp ? matrix(in->inputs_fp, n, cols) : NULL;
  qforge_status* st = qf_test_copy_quantizer.quantize(host, in, out);
  if (st != NULL) return st;
  metric(out, "has_hessian", in->hessian != NULL);
  metric(out, "has_inputs_q", in->inputs_q != NULL);
  metric(out, "has_inputs_fp", in->inputs_fp != NULL);
  metric(out, "has_act_stats", in->act_stats != NULL);
  if (in->inputs_q != NULL) metric(out, "rows_match", xq != NULL);
  if (xq != NULL && in->hessian != NULL) {
    const float* h = matrix(in->hessian, cols, cols);
    double worst = 0, scale = 0;
    int64_t i, j, r;
    for (i = 0; i < cols && h != NULL; ++i)
      for (j = 0; j < cols; ++j) {
        double g = 0;
        for (r = 0; r < n; ++r) g += (double)xq[r * cols + i] * xq[r * cols + j];
        g *= 2.0 / (double)n;
        if (fabs(g - h[i * cols + j]) > worst) worst = fabs(g - h[i * cols + j]);
        if (fabs(h[i * cols + j]) > scale) scale = fabs(h[i * cols + j]);
      }
    metric(out, "hessian_error", h != NULL && scale > 0 ? worst / scale : 1.0);
  }
  if (xq != NULL && in->act_stats != NULL) {
    const float* a = at_f32(in->act_stats);
    double worst = 0;
    int64_t j, r;
    for (j = 0; j < cols; ++j) {
      double m = 0;
      for (r = 0; r < n; ++r) m += fabs(xq[r * cols + j]);
      m /= (double)n;
      if (fabs(m - a[j]) > worst) worst = fabs(m - a[j]);
    }
    metric(out, "act_stats_error", worst);
  }
  if (xq != NULL && xf != NULL) {
    double worst = 0;
    int64_t k;
    for (k = 0; k < n * cols; ++k)
      if (fabs(xf[k] - xq[k]) > worst) worst = fabs(xf[k] - xq[k]);
    metric(out, "stream_difference", worst);
  }
  return NULL;
}

static const char* const probe_formats[] = {QF_TEST_COPY_FORMAT, NULL};
static const qforge_quantizer probe_quantizer = {sizeof(qforge_quantizer), 0, probe_formats,
                                                 &probe_quantize};
#ifdef QF_PROBE_ASKS_ALL
static const char* const features[] = {QFORGE_FEATURE_NEEDS_HESSIAN, QFORGE_FEATURE_NEEDS_INPUTS_Q,
                                       QFORGE_FEATURE_NEEDS_INPUTS_FP,
                                       QFORGE_FEATURE_NEEDS_ACT_STATS, NULL};
#define PROBE_ID "org.qforge.test.inputs-all"
#else
static const char* const features[] = {QFORGE_FEATURE_NEEDS_HESSIAN, NULL};
#define PROBE_ID "org.qforge.test.inputs-none"
#endif

static const qforge_component_desc component = {
    sizeof(qforge_component_desc), QFORGE_COMPONENT_QUANTIZER, 0, 0, PROBE_ID,
    "Inputs probe (test)", "1.0.0", "qforge tests", "MIT",
    "Copies the weight and reports which optional inputs it was given.", features, NULL, 0, 0,
    &probe_quantizer, NULL};
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-inputs-probe", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
