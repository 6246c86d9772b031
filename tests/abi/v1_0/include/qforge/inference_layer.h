/* Inference-layer components: run a layer stored in a packed format.
 *
 * An inference layer consumes one or more named packed formats (e.g.
 * "org.qforge.gptq/1"), possibly written by a quantizer in another plugin.
 * `create` builds a layer from the format's metadata and named tensors (it
 * copies what it keeps); `forward` computes y = x Wᵀ (+ bias); `backward_input`
 * computes dL/dx = dL/dy W so a frozen quantized layer can sit inside training;
 * `dequantize` writes W. Outputs are preallocated by the host, so no ownership
 * crosses the ABI here. */
#ifndef QFORGE_INFERENCE_LAYER_H
#define QFORGE_INFERENCE_LAYER_H

#include "component.h"
#include "host.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A layer instance; its layout is private to the plugin. */
typedef struct qforge_layer qforge_layer;

typedef struct qforge_inference_layer {
  uint32_t struct_size;           /* sizeof(qforge_inference_layer) as compiled by the plugin */
  uint32_t reserved;              /* 0 */
  const char* const* formats;     /* NULL-terminated ids of the formats it consumes */

  /* Builds a layer. `metadata_json` and `tensors` are borrowed for the call.
   * On success stores the instance in *layer and returns NULL. Any thread. */
  qforge_status* (*create)(const qforge_host* host, const char* format_id,
                           const char* metadata_json, const qforge_named_tensor* const* tensors,
                           uint32_t tensor_count, qforge_layer** layer);
  /* Destroys a layer made by `create`. Any thread, once, nothing running on it. */
  void (*destroy)(qforge_layer* layer);
  /* The layer's shape. Any thread. */
  void (*shape)(const qforge_layer* layer, int64_t* out_features, int64_t* in_features);
  /* y = x Wᵀ + bias. x: [..., in] float32; y: [..., out] float32, preallocated
   * by the host, contiguous. Concurrent calls on one layer are allowed. */
  qforge_status* (*forward)(const qforge_layer* layer, const DLTensor* x, const DLTensor* y);
  /* grad_x = grad_y W. grad_y: [..., out]; grad_x: [..., in] preallocated. */
  qforge_status* (*backward_input)(const qforge_layer* layer, const DLTensor* grad_y,
                                   const DLTensor* grad_x);
  /* Writes W, [out, in] float32 preallocated by the host. */
  qforge_status* (*dequantize)(const qforge_layer* layer, const DLTensor* weight);
} qforge_inference_layer;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_INFERENCE_LAYER_H */
