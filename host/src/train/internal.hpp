// Shared by the training stage's two translation units: the model services
// (services.cpp) and the trainer (trainer.cpp).
#pragma once

#include <ATen/Tensor.h>

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qforge_host/train/postprocess.hpp"

namespace qforge::host {

// Whether adapters run in training mode (dropout on) and the noise seed of
// the current micro-batch.
struct TrainMode {
  bool training = false;
  uint64_t seed = 0;
};

// A tensor the optimizer updates in place and its gradient.
struct TrainableTensor {
  std::string name;
  at::Tensor value;  // the owner's storage (an adapter's, an inference layer's)
  at::Tensor grad;   // host-owned, same shape
  double lr = -1;    // its peak learning rate; < 0: the trainer's
};

class PackedLayer;

// A packed linear inside autograd: its forward is the inference layer's, its
// backward the layer's backward_input; once tuned (tune()), the backward also
// accumulates the gradients of the layer's tunable parameters.
class DifferentiablePacked final : public LinearKernel {
 public:
  explicit DifferentiablePacked(std::shared_ptr<LinearKernel> inner);
  int64_t out_features() const override { return inner_->out_features(); }
  int64_t in_features() const override { return inner_->in_features(); }
  at::Tensor forward(const at::Tensor& x) const override;
  at::Tensor backward_input(const at::Tensor& gy) const override { return inner_->backward_input(gy); }
  at::Tensor dequantize() const override { return inner_->dequantize(); }
  std::string format_id() const override { return inner_->format_id(); }

  const LinearKernel& inner() const { return *inner_; }
  // Makes the tunable parameters trainable (once); UsageError when the
  // inference layer offers none.
  // (A deque: the addresses stay when tune_codes adds one.)
  std::deque<TrainableTensor>& tune(const std::string& layer);
  bool tuned() const { return !params_.empty(); }
  // Also the integer codes (once), at peak rate `lr`; UsageError when the
  // format has none to tune.
  void tune_codes(const std::string& layer, double lr);
  void accumulate(const at::Tensor& x, const at::Tensor& gy) const;  // grads += ∂L/∂params
  void update() const;  // after the optimizer changed the params in place

 private:
  PackedLayer& packed() const;
  std::shared_ptr<LinearKernel> inner_;
  at::Tensor anchor_;  // requires grad once tuned: keeps the node in the graph
  std::deque<TrainableTensor> params_;
  bool codes_ = false;
};

// A plugin's adapter on one linear layer: y = base(x) + f(x), with f and its
// backward called through the adapter's table. Under autograd it is one node
// of the graph, and its trainable tensors receive their gradients from the
// adapter's backward.
class PluginAdapter final : public LinearAdapter {
 public:
  using Param = TrainableTensor;
  PluginAdapter(qforge_adapter* adapter, const qforge_adapter_vtable* vtable, std::string layer,
                uint64_t layer_index, const TrainMode* mode, int64_t out, int64_t in);
  ~PluginAdapter() override;
  at::Tensor forward(const at::Tensor& x) const override;
  // Direct calls (no autograd): f(x), and grad_x (param grads accumulate).
  at::Tensor call_forward(const at::Tensor& x, bool training, uint64_t seed) const;
  at::Tensor call_backward(const at::Tensor& x, const at::Tensor& grad_y, bool training,
                           uint64_t seed) const;
  const std::string& layer() const { return layer_; }
  std::vector<Param>& params() { return params_; }
  AdapterExport export_() const;
  bool merge_into(at::Tensor& weight) const override;  // [out, in] float32

 private:
  qforge_adapter* adapter_;
  const qforge_adapter_vtable* vt_;
  std::string layer_;
  uint64_t layer_index_;
  const TrainMode* mode_;
  int64_t out_, in_;
  std::vector<Param> params_;
  at::Tensor anchor_;  // requires grad: keeps the node in the graph when x needs no gradient
};

struct ModelServices::Impl {
  Impl(Model& m, PostprocessContext c, const BlockScope* s)
      : model(m), context(std::move(c)), scope(s) {}
  Model& model;
  PostprocessContext context;
  const BlockScope* scope;  // null: the whole model
  qforge_model_services table{};
  std::vector<Linear*> linears;   // the blocks' linears, in order
  std::vector<uint32_t> block_of;  // block of each
  std::vector<std::string> format_of;
  std::vector<std::shared_ptr<LinearKernel>> packed_before;  // restored by the destructor
  std::map<std::string, std::shared_ptr<PluginAdapter>> adapters;  // by layer
  std::vector<std::shared_ptr<DifferentiablePacked>> packed;  // per linear (null: dense)
  std::vector<size_t> tuned;  // linears whose tunable parameters train, in order tuned
  TrainMode mode;
  bool trainer_alive = false;
  std::shared_ptr<Model> teacher;  // loaded by the first trainer that needs it
  std::map<std::string, at::Tensor> input_stats;  // by probe linear (input_stats)
  std::map<std::string, at::Tensor> input_gram;   // by probe linear (input_gram)
  std::vector<std::string> names;  // host-owned strings handed out (input_source)
  std::vector<std::string> written;  // parameters set_parameter replaced, in order

  // Linear `name`'s index; UsageError naming it when there is none.
  size_t index_of(const std::string& name) const;
  void attach(const std::string& layer, qforge_adapter* adapter, const qforge_adapter_vtable* vt);
};

}  // namespace qforge::host
