// qforge-sparsegpt: pruning. Two quantizers (sparsegpt.cpp): SparseGPT
// (org.qforge.sparsegpt, Algorithm 1 through qforge_gptq_core, alone or with
// int / FP8 quantization) and magnitude pruning (org.qforge.magnitude, the
// baseline); and the inference layer of their float output,
// org.qforge.pruned/1 (qforge/formats/pruned_v1.h; layer.cpp). Their
// quantized outputs are org.qforge.gptq/1 and
// org.qforge.ct-naive-quantized/1, run by the affine and W8A8 layers.
#include "sparsegpt.hpp"

namespace {
void describe(qforge::Plugin& plugin) {
  qforge::sparsegpt::describe_quantizers(plugin);
  qforge::sparsegpt::describe_layer(plugin);
}
}  // namespace

QFORGE_PLUGIN("qforge-sparsegpt", "1.0.0", describe)
