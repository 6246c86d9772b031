// The model as a post-process sees it (sdk/include/qforge/postprocess.h), and
// the autograd nodes that make packed layers and plugin adapters trainable.
#include <ATen/ATen.h>
#include <algorithm>
#include <cstddef>
#include <fmt/format.h>
#include <torch/csrc/autograd/custom_function.h>

#include <nlohmann/json.hpp>
#include <qforge/cpp/torch.hpp>

#include "internal.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/services.hpp"

namespace qforge::host {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autograd node of a DifferentiablePacked.
struct PackedNode : torch::autograd::Function<PackedNode> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& /*anchor*/,
                            int64_t node) {
    const auto* self = reinterpret_cast<const DifferentiablePacked*>(node);
    ctx->saved_data["node"] = node;
    if (self->tuned()) ctx->save_for_backward({x});
    return self->inner().forward(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto* self = reinterpret_cast<const DifferentiablePacked*>(ctx->saved_data["node"].toInt());
    at::Tensor gx = self->inner().backward_input(grad[0]);
    if (self->tuned()) self->accumulate(ctx->get_saved_variables()[0], grad[0]);
    return {gx, at::zeros({}), at::Tensor()};
  }
};

// A plugin adapter inside autograd (the adapter keeps no tape: x and the
// noise seed are passed again to its backward).
struct AdapterNode : torch::autograd::Function<AdapterNode> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& /*anchor*/,
                            int64_t adapter, bool training, int64_t seed) {
    ctx->save_for_backward({x});
    ctx->saved_data["adapter"] = adapter;
    ctx->saved_data["training"] = training;
    ctx->saved_data["seed"] = seed;
    return reinterpret_cast<const PluginAdapter*>(adapter)->call_forward(
        x, training, static_cast<uint64_t>(seed));
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad) {
    const auto* a = reinterpret_cast<const PluginAdapter*>(ctx->saved_data["adapter"].toInt());
    at::Tensor x = ctx->get_saved_variables()[0];
    at::Tensor gx = a->call_backward(x, grad[0], ctx->saved_data["training"].toBool(),
                                     static_cast<uint64_t>(ctx->saved_data["seed"].toInt()));
    return {gx, at::zeros({}), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

DifferentiablePacked::DifferentiablePacked(std::shared_ptr<LinearKernel> inner)
    : inner_(std::move(inner)), anchor_(at::zeros({}, at::kFloat)) {}

at::Tensor DifferentiablePacked::forward(const at::Tensor& x) const {
  if (at::GradMode::is_enabled() && (x.requires_grad() || tuned()))
    return PackedNode::apply(x, anchor_, reinterpret_cast<int64_t>(this));
  return inner_->forward(x);
}

PackedLayer& DifferentiablePacked::packed() const {
  auto* p = dynamic_cast<PackedLayer*>(inner_.get());
  if (p == nullptr) throw UsageError("this packed layer is not run by an inference-layer plugin");
  return *p;
}

std::deque<TrainableTensor>& DifferentiablePacked::tune(const std::string& layer) {
  if (tuned()) return params_;
  if (!packed().tunable())
    throw UsageError(fmt::format("{} ({}): its inference layer has no tunable parameters", layer,
                                 inner_->format_id()));
  for (auto& [name, value] : packed().tunable_params())
    params_.push_back({name, value, at::zeros_like(value)});
  anchor_.set_requires_grad(true);
  return params_;
}

void DifferentiablePacked::tune_codes(const std::string& layer, double lr) {
  tune(layer);
  if (codes_) return;
  if (!packed().codes_tunable())
    throw UsageError(fmt::format("{} ({}): its format has no integer codes to tune", layer,
                                 inner_->format_id()));
  packed().tune_codes();
  auto params = packed().tunable_params();
  if (params.size() <= params_.size())
    throw PluginError(QFORGE_STATUS_INTERNAL,
                      fmt::format("{}: tune_codes added no tunable param", inner_->format_id()));
  for (size_t k = params_.size(); k < params.size(); ++k)
    params_.push_back({params[k].first, params[k].second, at::zeros_like(params[k].second), lr});
  codes_ = true;
}

void DifferentiablePacked::accumulate(const at::Tensor& x, const at::Tensor& gy) const {
  std::vector<at::Tensor> grads;
  for (const auto& p : params_) grads.push_back(p.grad);
  packed().backward_params(x, gy, grads);
}

void DifferentiablePacked::update() const { packed().update_params(); }

namespace {

// splitmix64: the per-layer noise seed from the micro-batch's.
uint64_t mix(uint64_t a, uint64_t b) {
  uint64_t z = a + 0x9E3779B97F4A7C15ull * (b + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

qforge_status* fail(int32_t code, const std::string& message) {
  const qforge_host* h = services();
  return h->status_create(h, code, message.c_str());
}

}  // namespace

// ---------------------------------------------------------------- adapters --

PluginAdapter::PluginAdapter(qforge_adapter* adapter, const qforge_adapter_vtable* vt,
                             std::string layer, uint64_t layer_index, const TrainMode* mode,
                             int64_t out, int64_t in)
    : adapter_(adapter), vt_(vt), layer_(std::move(layer)), layer_index_(layer_index),
      mode_(mode), out_(out), in_(in) {
  anchor_ = at::zeros({}, at::kFloat).set_requires_grad(true);
  const uint32_t n = vt_->param_count(adapter_);
  for (uint32_t i = 0; i < n; ++i) {
    const char* name = nullptr;
    const DLTensor* value = nullptr;
    throw_if_error(vt_->param(adapter_, i, &name, &value),
                   fmt::format("adapter on {}: param {}", layer_, i));
    if (name == nullptr || value == nullptr)
      throw PluginError(QFORGE_STATUS_INTERNAL,
                        fmt::format("adapter on {}: param {} has no name or tensor", layer_, i));
    at::Tensor t = borrow_float_cpu(*value, fmt::format("adapter on {}: param '{}'", layer_, name));
    if (!t.is_contiguous())
      throw PluginError(QFORGE_STATUS_INVALID_ARGUMENT,
                        fmt::format("adapter on {}: param '{}' is not contiguous", layer_, name));
    for (const Param& p : params_)
      if (p.name == name)
        throw PluginError(QFORGE_STATUS_INVALID_ARGUMENT,
                          fmt::format("adapter on {}: two params named '{}'", layer_, name));
    params_.push_back({name, t, at::zeros_like(t)});
  }
}

PluginAdapter::~PluginAdapter() { vt_->destroy(adapter_); }

at::Tensor PluginAdapter::forward(const at::Tensor& x) const {
  const uint64_t seed = mix(mode_->seed, layer_index_);
  if (at::GradMode::is_enabled())
    return AdapterNode::apply(x, anchor_, reinterpret_cast<int64_t>(this), mode_->training,
                              static_cast<int64_t>(seed));
  return call_forward(x, mode_->training, seed);
}

at::Tensor PluginAdapter::call_forward(const at::Tensor& x, bool training, uint64_t seed) const {
  at::Tensor x2 = x.reshape({-1, in_}).to(at::kFloat).contiguous();
  at::Tensor y = at::zeros({x2.size(0), out_}, at::kFloat);
  DLView xv(x2), yv(y);
  throw_if_error(vt_->forward(adapter_, training ? 1 : 0, seed, xv.get(), yv.get()),
                 fmt::format("adapter on {}: forward", layer_));
  auto shape = x.sizes().vec();
  shape.back() = out_;
  return y.view(shape);
}

at::Tensor PluginAdapter::call_backward(const at::Tensor& x, const at::Tensor& grad_y,
                                        bool training, uint64_t seed) const {
  at::Tensor x2 = x.reshape({-1, in_}).to(at::kFloat).contiguous();
  at::Tensor g2 = grad_y.reshape({-1, out_}).to(at::kFloat).contiguous();
  at::Tensor gx = at::zeros_like(x2);
  DLView xv(x2), gv(g2), gxv(gx);
  std::vector<std::unique_ptr<DLView>> grads;
  std::vector<const DLTensor*> grad_ptrs;
  for (const Param& p : params_) {
    grads.push_back(std::make_unique<DLView>(p.grad));
    grad_ptrs.push_back(grads.back()->get());
  }
  throw_if_error(vt_->backward(adapter_, training ? 1 : 0, seed, xv.get(), gv.get(), gxv.get(),
                               grad_ptrs.data()),
                 fmt::format("adapter on {}: backward", layer_));
  return gx.view(x.sizes()).to(x.scalar_type());
}

AdapterExport PluginAdapter::export_() const {
  const char* meta = nullptr;
  const char* format = vt_->export_format ? vt_->export_format(adapter_, &meta) : nullptr;
  if (format == nullptr)
    throw UsageError(fmt::format("the adapter on {} has no file format it can be saved in", layer_));
  AdapterExport e{layer_, format, meta ? meta : "{}", {}};
  for (const Param& p : params_) e.params.emplace_back(p.name, p.value.clone());
  return e;
}

bool PluginAdapter::merge_into(at::Tensor& weight) const {
  if (vt_->merge == nullptr) return false;
  DLView wv(weight);
  throw_if_error(vt_->merge(adapter_, wv.get()), fmt::format("adapter on {}: merge", layer_));
  return true;
}

// ---------------------------------------------------------------- services --

namespace {

ModelServices::Impl& impl_of(const qforge_model_services* m) {
  return *static_cast<ModelServices::Impl*>(m->host_data);
}

uint32_t layer_count(const qforge_model_services* m) {
  return static_cast<uint32_t>(impl_of(m).linears.size());
}

const char* layer_name(const qforge_model_services* m, uint32_t i) {
  const auto& ls = impl_of(m).linears;
  return i < ls.size() ? ls[i]->name.c_str() : nullptr;
}

uint32_t block_count(const qforge_model_services* m) {
  return static_cast<uint32_t>(impl_of(m).model.blocks().size());
}

qforge_status* layer_info(const qforge_model_services* m, uint32_t i, int64_t* out, int64_t* in,
                          uint32_t* block, const char** format) {
  auto& s = impl_of(m);
  if (i >= s.linears.size())
    return fail(QFORGE_STATUS_INVALID_ARGUMENT, fmt::format("layer_info: no layer {}", i));
  const Linear& l = *s.linears[i];
  if (out) *out = l.packed ? l.packed->out_features() : l.weight.size(0);
  if (in) *in = l.packed ? l.packed->in_features() : l.weight.size(1);
  if (block) *block = s.block_of[i];
  if (format) *format = s.format_of[i].c_str();
  return nullptr;
}

// The tensor a parameter name stands for: a linear's weight or bias, or a
// block's norm. `dequantized` receives a packed linear's weight.
at::Tensor* find_parameter(ModelServices::Impl& s, const std::string& name, const Linear** packed) {
  *packed = nullptr;
  for (Linear* l : s.linears) {
    if (name == l->name + ".weight") {
      if (l->packed) {
        *packed = l;
        return nullptr;
      }
      return &l->weight;
    }
    if (name == l->name + ".bias" && l->bias.defined()) return &l->bias;
  }
  const auto& c = s.model.config();
  for (size_t i = 0; i < s.model.blocks().size(); ++i)
    if (s.scope == nullptr || i == s.scope->block)
      if (at::Tensor* t = s.model.blocks()[i].parameter(
              c.arch.layout->prefix(static_cast<int64_t>(i)), name))
        return t;
  throw UsageError(fmt::format("the model has no parameter named '{}'", name));
}

qforge_status* get_parameter(const qforge_model_services* m, const char* name,
                             DLManagedTensor** value) {
  return guard(services(), [&] {
    if (name == nullptr || value == nullptr) invalid_argument("get_parameter: NULL argument");
    const Linear* packed = nullptr;
    at::Tensor* t = find_parameter(impl_of(m), name, &packed);
    at::Tensor copy = packed ? packed->packed->dequantize() : t->to(at::kFloat).clone();
    *value = export_tensor(copy);
  });
}

qforge_status* set_parameter(const qforge_model_services* m, const char* name,
                             const DLTensor* value) {
  return guard(services(), [&] {
    if (name == nullptr || value == nullptr) invalid_argument("set_parameter: NULL argument");
    const Linear* packed = nullptr;
    at::Tensor* t = find_parameter(impl_of(m), name, &packed);
    if (packed)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                  fmt::format("set_parameter: {} is packed ({}); its weight cannot be replaced",
                              name, packed->packed->format_id()));
    at::Tensor v = borrow_float_cpu(*value, fmt::format("set_parameter {}", name));
    if (v.sizes() != t->sizes()) invalid_argument(fmt::format("set_parameter: {} has another shape", name));
    t->copy_(v);
    auto& written = impl_of(m).written;
    if (std::find(written.begin(), written.end(), name) == written.end()) written.push_back(name);
    impl_of(m).input_stats.clear();  // they describe the block as it was
    impl_of(m).input_gram.clear();
  });
}

// The stage of linear `i` in its block's layout, and that block's prefix.
std::pair<size_t, std::string> stage_of(const ModelServices::Impl& s, size_t i) {
  const BlockLayout& layout = *s.model.config().arch.layout;
  const std::string prefix = layout.prefix(s.block_of[i]);
  const std::string& name = s.linears[i]->name;
  auto stage = layout.stage_of(std::string_view(name).substr(prefix.size()));
  if (name.compare(0, prefix.size(), prefix) != 0 || !stage)
    throw UsageError(fmt::format("{} is not a linear of the architecture table", name));
  return {*stage, prefix};
}

qforge_status* input_source(const qforge_model_services* m, uint32_t i, const char** weight,
                            const char** bias) {
  return guard(services(), [&] {
    auto& s = impl_of(m);
    if (i >= s.linears.size()) invalid_argument(fmt::format("input_source: no layer {}", i));
    if (weight == nullptr || bias == nullptr) invalid_argument("input_source: NULL argument");
    *weight = *bias = "";
    const BlockLayout& layout = *s.model.config().arch.layout;
    auto [stage, prefix] = stage_of(s, i);
    if (stage >= layout.stage_sources.size() || layout.stage_sources[stage].empty()) return;
    const std::string source = prefix + layout.stage_sources[stage];
    const int64_t in = s.linears[i]->packed ? s.linears[i]->packed->in_features()
                                            : s.linears[i]->weight.size(1);
    std::string w = source + ".weight", b;
    const Linear* packed = nullptr;
    const at::Tensor* t = nullptr;
    try {
      t = find_parameter(s, w, &packed);
    } catch (const UsageError&) {
      return;  // not in this scope (another block) or absent from the model
    }
    if (packed) return;  // a packed source's rows can't be rescaled
    if (t->size(0) != in) return;  // e.g. v_proj -> o_proj under grouped-query attention
    for (const Linear* l : s.linears)
      if (l->name == source && l->bias.defined()) b = source + ".bias";
    s.names.push_back(w);
    *weight = s.names.back().c_str();
    if (!b.empty()) {
      s.names.push_back(b);
      *bias = s.names.back().c_str();
    }
  });
}

// What input_stats and input_gram share: linear `i`'s inputs are those of
// the first linear of its stage (the probe); `compute` runs on them once per
// probe until a set_parameter, `cache` keeps the result.
template <class Compute>
qforge_status* input_moments(const qforge_model_services* m, uint32_t i, DLManagedTensor** result,
                             const char* what, const Compute& compute,
                             std::map<std::string, at::Tensor> ModelServices::Impl::*cache) {
  auto& s = impl_of(m);
  if (s.scope == nullptr || !compute(s.scope))
    return fail(QFORGE_STATUS_UNSUPPORTED,
                fmt::format("{}: activation statistics are given to pre-processes in the "
                            "pipeline, with calibration data (--calib FILE)", what));
  return guard(services(), [&] {
    if (i >= s.linears.size()) invalid_argument(fmt::format("{}: no layer {}", what, i));
    if (result == nullptr) invalid_argument(fmt::format("{}: NULL argument", what));
    const BlockLayout& layout = *s.model.config().arch.layout;
    auto [stage, prefix] = stage_of(s, i);
    const std::string probe = prefix + layout.stages[stage].front();
    auto& c = s.*cache;
    auto it = c.find(probe);
    if (it == c.end()) it = c.emplace(probe, compute(s.scope)(probe)).first;
    *result = export_tensor(it->second.clone());
  });
}

qforge_status* input_stats(const qforge_model_services* m, uint32_t i, DLManagedTensor** stats) {
  return input_moments(m, i, stats, "input_stats",
                       [](const BlockScope* b) -> const auto& { return b->input_stats; },
                       &ModelServices::Impl::input_stats);
}

qforge_status* input_gram(const qforge_model_services* m, uint32_t i, DLManagedTensor** gram) {
  return input_moments(m, i, gram, "input_gram",
                       [](const BlockScope* b) -> const auto& { return b->input_gram; },
                       &ModelServices::Impl::input_gram);
}

}  // namespace

size_t ModelServices::Impl::index_of(const std::string& name) const {
  for (size_t i = 0; i < linears.size(); ++i)
    if (linears[i]->name == name) return i;
  throw UsageError(fmt::format("the model has no linear layer named '{}'", name));
}

void ModelServices::Impl::attach(const std::string& layer, qforge_adapter* adapter,
                                 const qforge_adapter_vtable* vt) {
  // The host owns the adapter from here: destroyed on every path below.
  struct Owner {
    qforge_adapter* a;
    const qforge_adapter_vtable* vt;
    ~Owner() { if (a && vt && vt->destroy) vt->destroy(a); }
  } owner{adapter, vt};
  if (adapter == nullptr) invalid_argument("attach_adapter: no adapter");
  if (vt == nullptr || vt->struct_size < sizeof(qforge_adapter_vtable) || !vt->param_count ||
      !vt->param || !vt->forward || !vt->backward || !vt->destroy) {
    owner.vt = (vt && vt->struct_size >= sizeof(qforge_adapter_vtable)) ? vt : nullptr;
    invalid_argument("attach_adapter: the adapter's table is incomplete or smaller than revision 1's");
  }
  const size_t i = index_of(layer);
  Linear& l = *linears[i];
  if (adapters.count(layer) || l.adapter)
    invalid_argument(fmt::format("{} already has an adapter", layer));
  owner.a = nullptr;  // PluginAdapter destroys it from here
  const int64_t out = l.packed ? l.packed->out_features() : l.weight.size(0);
  const int64_t in = l.packed ? l.packed->in_features() : l.weight.size(1);
  auto a = std::make_shared<PluginAdapter>(adapter, vt, layer, i, &mode, out, in);
  l.adapter = a;
  adapters[layer] = a;
}

ModelServices::ModelServices(Model& model, PostprocessContext context, const BlockScope* scope)
    : impl_(std::make_unique<Impl>(model, std::move(context), scope)) {
  offer_host_extension(QFORGE_EXT_HOST_TRAIN, QFORGE_EXT_HOST_TRAIN_REVISION, host_train_table());
  Impl& s = *impl_;
  for (size_t b = 0; b < model.blocks().size(); ++b) {
    if (scope != nullptr && b != scope->block) continue;
    if (!model.blocks()[b].input_norm.defined())
      throw UsageError(fmt::format("post-process: block {} is not loaded", b));
    for (Linear* l : model.blocks()[b].linears()) {
      s.linears.push_back(l);
      s.block_of.push_back(static_cast<uint32_t>(b));
      s.format_of.push_back(l->packed ? l->packed->format_id() : "");
      s.packed_before.push_back(l->packed);
      s.packed.push_back(l->packed ? std::make_shared<DifferentiablePacked>(l->packed) : nullptr);
      if (l->packed) l->packed = s.packed.back();
    }
  }
  qforge_model_services& t = s.table;
  t.struct_size = sizeof(qforge_model_services);
  t.host_data = &s;
  t.layer_count = &layer_count;
  t.layer_name = &layer_name;
  t.get_parameter = &get_parameter;
  t.set_parameter = &set_parameter;
  t.block_count = &block_count;
  t.layer_info = &layer_info;
  t.input_source = &input_source;
  t.input_stats = &input_stats;
  t.input_gram = &input_gram;
}

ModelServices::~ModelServices() {
  Impl& s = *impl_;
  for (size_t i = 0; i < s.linears.size(); ++i) {
    Linear& l = *s.linears[i];
    if (auto it = s.adapters.find(l.name); it != s.adapters.end() && l.adapter == it->second)
      l.adapter.reset();
    if (l.packed) l.packed = s.packed_before[i];
  }
  s.adapters.clear();
}

const qforge_model_services* ModelServices::table() const { return &impl_->table; }

std::vector<std::pair<std::string, at::Tensor>> ModelServices::written_parameters() const {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& name : impl_->written) {
    const Linear* packed = nullptr;
    out.emplace_back(name, find_parameter(*impl_, name, &packed)->clone());
  }
  return out;
}

std::vector<std::string> ModelServices::tuned_layers() const {
  std::vector<std::string> names;
  for (size_t i : impl_->tuned) names.push_back(impl_->linears[i]->name);
  return names;
}

std::vector<AdapterExport> ModelServices::export_adapters() const {
  std::vector<AdapterExport> out;
  for (Linear* l : impl_->linears)
    if (auto it = impl_->adapters.find(l->name); it != impl_->adapters.end())
      out.push_back(it->second->export_());
  return out;
}

void save_adapter_exports(const std::string& path, const std::vector<AdapterExport>& adapters) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  nlohmann::json index = nlohmann::json::array();
  for (const AdapterExport& a : adapters) {
    nlohmann::json names = nlohmann::json::array();
    for (const auto& [name, t] : a.params) {
      tensors.emplace_back(a.layer + "/" + name, t.contiguous());
      names.push_back(name);
    }
    index.push_back({{"layer", a.layer}, {"format", a.format}, {"metadata", a.metadata},
                     {"params", names}});
  }
  save_safetensors(path, tensors, {{"adapters", index.dump()}});
}

std::vector<AdapterExport> load_adapter_exports(const std::string& path) {
  SafetensorsFile f(path);
  auto it = f.metadata().find("adapters");
  nlohmann::json index = it == f.metadata().end() ? nlohmann::json()
                                                  : nlohmann::json::parse(it->second, nullptr, false);
  if (!index.is_array()) throw ModelFileError(fmt::format("{}: no adapter index in its header", path));
  std::vector<AdapterExport> out;
  try {
    for (const auto& a : index) {
      AdapterExport e{a.at("layer").get<std::string>(), a.at("format").get<std::string>(),
                      a.at("metadata").get<std::string>(), {}};
      for (const auto& name : a.at("params"))
        e.params.emplace_back(name.get<std::string>(),
                              f.load(e.layer + "/" + name.get<std::string>(), at::kFloat));
      out.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& e) {
    throw ModelFileError(fmt::format("{}: malformed adapter index ({})", path, e.what()));
  }
  return out;
}

bool has_run_block(const Component& component) {
  const qforge_postprocess* p = component.postprocess();
  return p != nullptr &&
         p->struct_size >= offsetof(qforge_postprocess, run_block) + sizeof p->run_block &&
         p->run_block != nullptr;
}

void run_postprocess_block(const Component& component, const ParamValues& params,
                           ModelServices& model) {
  const BlockScope* scope = model.impl().scope;
  if (scope == nullptr || !has_run_block(component))
    throw UsageError(fmt::format("'{}' has no per-block hook", component.desc->id));
  PluginActivity activity(fmt::format("{} (post-process) on block {}", component.desc->id, scope->block));
  throw_if_error(component.postprocess()->run_block(services(), model.table(),
                                                    static_cast<uint32_t>(scope->block),
                                                    params.data(), params.size()),
                 component.desc->id);
}

void run_preprocess_block(const Component& component, const ParamValues& params,
                          ModelServices& model) {
  const BlockScope* scope = model.impl().scope;
  const qforge_preprocess* pre = component.preprocess();
  if (scope == nullptr || pre == nullptr)
    throw UsageError(fmt::format("'{}' is not a pre-process", component.desc->id));
  PluginActivity activity(fmt::format("{} (pre-process) on block {}", component.desc->id, scope->block));
  try {
    throw_if_error(pre->run_block(services(), model.table(), static_cast<uint32_t>(scope->block),
                                  params.data(), params.size()),
                   component.desc->id);
  } catch (const PluginError& e) {
    if (e.code() == QFORGE_STATUS_INVALID_ARGUMENT) throw UsageError(e.what());
    throw;
  }
}

void run_postprocess(const Component& component, const ParamValues& params, ModelServices& model) {
  const qforge_postprocess* pp = component.postprocess();
  if (pp == nullptr) throw UsageError(fmt::format("'{}' is not a post-process", component.desc->id));
  PluginActivity activity(fmt::format("{} (post-process)", component.desc->id));
  try {
    throw_if_error(pp->run(services(), model.table(), params.data(), params.size()),
                   component.desc->id);
  } catch (const PluginError& e) {
    // "the caller's input is wrong": the user's (a parameter, the data, the
    // teacher), often reported by the host's own services through the plugin.
    if (e.code() == QFORGE_STATUS_INVALID_ARGUMENT)
      throw UsageError(e.what());
    throw;
  }
}

}  // namespace qforge::host
