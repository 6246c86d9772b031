// Calling quantizer and inference-layer components through the ABI.
#pragma once

#include <ATen/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <qforge/ext/train.h>

#include "qforge_host/model/model.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qforge::host {

// What a quantizer returned for one layer.
struct QuantResult {
  std::string format;                         // e.g. "org.qforge.rtn/1"
  std::string metadata;                       // JSON object text
  std::map<std::string, at::Tensor> tensors;  // packed tensors by name
  at::Tensor dequantized;                     // [out, in] float32
  std::map<std::string, double> metrics;      // plugin-reported figures
};

struct QuantizeRequest {
  std::string layer_name;
  at::Tensor weight;   // [out, in] float32
  at::Tensor bias;     // optional
  at::Tensor hessian;  // optional [in, in] float32
  uint64_t nsamples = 0;
  at::Tensor inputs_q, inputs_fp;  // optional [n, in] float32 (needs-inputs-q / -fp)
  at::Tensor act_stats;            // optional [in] float32 (needs-act-stats)
  at::Tensor act_absmax;           // optional [in] float32 (needs-act-absmax)
};

// Runs `quantizer` on one layer; checks that the result is complete and well
// shaped. Throws PluginError / UsageError.
QuantResult quantize_layer(const Component& quantizer, const QuantizeRequest& request,
                           const ParamValues& params);

// A layer held by an inference-layer component.
class PackedLayer final : public LinearKernel {
 public:
  PackedLayer(const Component& component, const QuantResult& result);
  ~PackedLayer() override;
  PackedLayer(const PackedLayer&) = delete;
  PackedLayer& operator=(const PackedLayer&) = delete;

  int64_t out_features() const override { return out_; }
  int64_t in_features() const override { return in_; }
  at::Tensor forward(const at::Tensor& x) const override;
  at::Tensor backward_input(const at::Tensor& gy) const override;
  at::Tensor dequantize() const override;
  std::string format_id() const override { return format_; }

  // Tunable parameters (qforge.layer.tunable, qforge/ext/train.h): whether
  // the inference layer offers them; views of them (the layer's storage,
  // updated in place); grads[i] += ∂L/∂param_i for a forward's x and grad_y;
  // and, after an update in place, making the layer use them.
  bool tunable() const { return tunable_ != nullptr; }
  std::vector<std::pair<std::string, at::Tensor>> tunable_params();
  void backward_params(const at::Tensor& x, const at::Tensor& gy,
                       const std::vector<at::Tensor>& grads);
  void update_params();
  // Whether the layer can write its tuned parameters back into its format
  // (qforge.layer.tunable revision 2), and doing so from the result it was
  // created from (or last stored): the same format with the parameters as
  // tuned, rounded to what the format stores (the layer computes with the
  // rounded values from here).
  bool storable() const;
  QuantResult store();
  // Whether the format's integer codes can be tuned too (revision 3), and
  // making them so: one more tunable param, "code_offsets".
  bool codes_tunable() const;
  void tune_codes();

 private:
  const qforge_inference_layer* vt_;
  const qforge_layer_tunable* tunable_ = nullptr;
  std::string format_;
  QuantResult origin_;  // created from, or last stored (its dequantized weight dropped)
  qforge_layer* layer_ = nullptr;
  int64_t out_ = 0, in_ = 0;
};

}  // namespace qforge::host
