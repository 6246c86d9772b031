// Optional header-only helper (ATen): the checks every quantizer makes on the
// tensors of a quantize call.
//
//   const qforge::LayerInput in = qforge::LayerInput::from(input);
//   in.weight   float32 [out, in] on the CPU, finite (a view of the input)
//   in.bias     float32 [out], a contiguous copy; undefined without a bias
//   in.hessian  float32 [in, in] on the CPU, finite (a view); undefined when
//               the host passed none
//   in.inputs_q, in.inputs_fp  float32 [n, in] views (needs-inputs-q / -fp)
//   in.act_stats               float32 [in] view (needs-act-stats)
//   in.act_absmax              float32 [in] view (needs-act-absmax; ABI 1.2)
//               each undefined unless the component declared the tag
#ifndef QFORGE_CPP_LAYER_INPUT_HPP
#define QFORGE_CPP_LAYER_INPUT_HPP

#include <ATen/ATen.h>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

namespace qforge {

struct LayerInput {
  at::Tensor weight, bias, hessian;
  at::Tensor inputs_q, inputs_fp, act_stats, act_absmax;

  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }

  // Throws INVALID_ARGUMENT (UNSUPPORTED for a tensor on another device).
  static LayerInput from(const qforge_quantize_input& input) {
    constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();
    LayerInput in;
    if (input.weight == nullptr) invalid_argument("no weight given");
    in.weight = borrow_float_cpu(*input.weight, "weight");
    const at::Tensor& w = in.weight;
    if (w.dim() != 2 || w.size(0) < 1 || w.size(1) < 1 || w.size(0) > kMaxDim ||
        w.size(1) > kMaxDim)
      invalid_argument("weight must be a non-empty 2-D [out, in] tensor, got " +
                       shape_str(w.sizes()));
    if (!at::isfinite(w).all().item<bool>())
      invalid_argument("weight contains NaN or infinite values");
    const int64_t out_f = w.size(0), in_f = w.size(1);

    if (input.hessian != nullptr) {
      in.hessian = borrow_float_cpu(*input.hessian, "hessian");
      const at::Tensor& h = in.hessian;
      if (h.dim() != 2 || h.size(0) != in_f || h.size(1) != in_f)
        invalid_argument("hessian must be [" + std::to_string(in_f) + ", " + std::to_string(in_f) +
                         "] for a weight " + shape_str(w.sizes()) + ", got " +
                         shape_str(h.sizes()));
      if (!at::isfinite(h).all().item<bool>())
        invalid_argument("hessian contains NaN or infinite values");
    }

    auto rows = [&](const DLTensor* t, const char* what) {
      if (t == nullptr) return at::Tensor();
      at::Tensor x = borrow_float_cpu(*t, what);
      if (x.dim() != 2 || x.size(1) != in_f)
        invalid_argument(std::string(what) + " must be [n, " + std::to_string(in_f) + "], got " +
                         shape_str(x.sizes()));
      return x;
    };
    in.inputs_q = rows(input.inputs_q, "inputs_q");
    in.inputs_fp = rows(input.inputs_fp, "inputs_fp");
    auto channels = [&](const DLTensor* t, const char* what) {
      if (t == nullptr) return at::Tensor();
      at::Tensor x = borrow_float_cpu(*t, what);
      if (x.dim() != 1 || x.size(0) != in_f)
        invalid_argument(std::string(what) + " must be [" + std::to_string(in_f) + "], got " +
                         shape_str(x.sizes()));
      return x;
    };
    in.act_stats = channels(input.act_stats, "act_stats");
    // A field of ABI 1.2: absent from the struct of an older host.
    if (input.struct_size >= offsetof(qforge_quantize_input, act_absmax) + sizeof input.act_absmax)
      in.act_absmax = channels(input.act_absmax, "act_absmax");

    if (input.bias != nullptr) {
      const at::Tensor bias = borrow_float_cpu(*input.bias, "bias");
      if (bias.dim() != 1 || bias.size(0) != out_f)
        invalid_argument("bias must be [" + std::to_string(out_f) + "], got " +
                         shape_str(bias.sizes()));
      in.bias = bias.clone(at::MemoryFormat::Contiguous);  // the input is only borrowed
    }
    return in;
  }
};

}  // namespace qforge

#endif  // QFORGE_CPP_LAYER_INPUT_HPP
