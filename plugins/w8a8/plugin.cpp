// qforge-w8a8: 8-bit weights with quantized activations (llm-compressor's
// W8A8 and FP8 schemes), in org.qforge.ct-naive-quantized/1
// (qforge/formats/ct_naive_quantized_v1.h): two quantizers (quantizers.cpp)
// and the inference layer that quantizes activations at run time and
// multiplies with the int8 / e4m3 kernels (layer.cpp).
#include "w8a8.hpp"

namespace {
void describe(qforge::Plugin& plugin) {
  qforge::w8a8::describe_quantizers(plugin);
  qforge::w8a8::describe_layer(plugin);
}
}  // namespace

QFORGE_PLUGIN("qforge-w8a8", "1.0.0", describe)
