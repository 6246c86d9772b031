// The writer of org.qforge.ct-naive-quantized/1 (qforge/formats/
// ct_naive_quantized_v1.h) that org.qforge.w8a8, org.qforge.fp8
// (quantizers.cpp) and org.qforge.sparsegpt's FP8 output share: the static
// library qforge_w8a8_writer, so the format is written in one place.
#pragma once

#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>

namespace qforge::w8a8 {

// What the format's metadata says besides the type.
struct Scheme {
  bool per_tensor = false;     // weights: one scale for the tensor (else per channel)
  bool static_inputs = false;  // activations: one static scale (else per token, dynamic)
};

// The format's metadata for weights and activations of `type` ("int" or
// "float", 8 bits, symmetric) of a layer [out, in].
nlohmann::json metadata(const char* type, const Scheme& s, int64_t in, int64_t out);

// Writes the result: the format with `meta`, the codes (int8 or e4m3 bytes),
// the scales ([out, 1] or [1]), the static input scale when defined, the
// layer's bias, the dequantized weight and its max_abs_error.
void finish(const QuantizeOutput& out, const LayerInput& in, const nlohmann::json& meta,
            const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& static_scale,
            const at::Tensor& dequantized);

}  // namespace qforge::w8a8
