// org.qforge.ct-naive-quantized/1's writer; see ct_naive_writer.hpp.
#include "ct_naive_writer.hpp"

#include <qforge/cpp/torch.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>

namespace qforge::w8a8 {
namespace {

using nlohmann::json;

json args(const char* type, const char* strategy) {
  return {{QFORGE_CT_META_NUM_BITS, 8}, {QFORGE_CT_META_TYPE, type},
          {QFORGE_CT_META_SYMMETRIC, true}, {QFORGE_CT_META_STRATEGY, strategy}};
}

}  // namespace

json metadata(const char* type, const Scheme& s, int64_t in, int64_t out) {
  json input = args(type, s.static_inputs ? "tensor" : "token");
  input[QFORGE_CT_META_DYNAMIC] = !s.static_inputs;
  return json{{QFORGE_CT_META_WEIGHTS, args(type, s.per_tensor ? "tensor" : "channel")},
              {QFORGE_CT_META_INPUT_ACTIVATIONS, input},
              {QFORGE_CT_META_IN_FEATURES, in},
              {QFORGE_CT_META_OUT_FEATURES, out}};
}

void finish(const QuantizeOutput& out, const LayerInput& in, const json& meta,
            const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& static_scale,
            const at::Tensor& dequantized) {
  out.set_format(QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1, meta);
  out.add_tensor(QFORGE_CT_WEIGHT, export_tensor(codes));
  out.add_tensor(QFORGE_CT_NAIVE_WEIGHT_SCALE, export_tensor(scales));
  if (static_scale.defined()) out.add_tensor(QFORGE_CT_INPUT_SCALE, export_tensor(static_scale));
  if (in.bias.defined()) out.add_tensor(QFORGE_CT_NAIVE_BIAS, export_tensor(in.bias));
  out.set_metric("max_abs_error", (dequantized - in.weight).abs().max().item<double>());
  out.set_dequantized(export_tensor(dequantized));
}

}  // namespace qforge::w8a8
