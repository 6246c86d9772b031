// Calling quantizer and inference-layer components; the one host translation
// unit that bridges at::Tensor and DLPack (through qforge/cpp/torch.hpp).
#include "qforge_host/plugins/abi_bridge.hpp"

#include <cstddef>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <nlohmann/json.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/ext/train.h>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/plugins/services.hpp"

namespace qforge::host {
namespace {

// The sink a quantizer writes into (sdk/include/qforge/quantizer.h).
struct Sink {
  qforge_quantize_output table{};
  QuantResult result;
  bool has_format = false;
  std::string error;  // first protocol error, reported after the call

  Sink() {
    table.struct_size = sizeof(qforge_quantize_output);
    table.host_data = this;
    table.set_format = &Sink::set_format;
    table.add_tensor = &Sink::add_tensor;
    table.set_dequantized = &Sink::set_dequantized;
    table.set_metric = &Sink::set_metric;
  }
  Sink(const Sink&) = delete;
  Sink& operator=(const Sink&) = delete;

  static Sink& of(const qforge_quantize_output* out) {
    return *static_cast<Sink*>(out->host_data);
  }
  static qforge_status* fail(const std::string& message) {
    const qforge_host* h = services();
    return h->status_create(h, QFORGE_STATUS_INVALID_ARGUMENT, message.c_str());
  }
  static qforge_status* set_format(const qforge_quantize_output* out, const char* id,
                                   const char* metadata) {
    Sink& s = of(out);
    if (id == nullptr || id[0] == '\0') return fail("set_format: empty format id");
    if (s.has_format) return fail("set_format called twice");
    std::string meta = metadata ? metadata : "{}";
    auto parsed = nlohmann::json::parse(meta, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_object())
      return fail("set_format: metadata is not a JSON object");
    s.result.format = id;
    s.result.metadata = meta;
    s.has_format = true;
    return nullptr;
  }
  static qforge_status* add_tensor(const qforge_quantize_output* out, const char* name,
                                   DLManagedTensor* t) {
    Sink& s = of(out);
    return guard(services(), [&] {
      at::Tensor tensor = adopt(t);  // owns t from here, even if we fail below
      if (name == nullptr || name[0] == '\0') invalid_argument("add_tensor: empty name");
      if (!s.result.tensors.emplace(name, tensor).second)
        invalid_argument(fmt::format("add_tensor: tensor '{}' added twice", name));
    });
  }
  static qforge_status* set_dequantized(const qforge_quantize_output* out, DLManagedTensor* t) {
    Sink& s = of(out);
    return guard(services(), [&] {
      at::Tensor tensor = adopt(t);
      if (s.result.dequantized.defined()) invalid_argument("set_dequantized called twice");
      s.result.dequantized = tensor;
    });
  }
  static qforge_status* set_metric(const qforge_quantize_output* out, const char* name,
                                   double value) {
    if (name == nullptr || name[0] == '\0') return fail("set_metric: empty name");
    of(out).result.metrics[name] = value;
    return nullptr;
  }
};

void require(bool ok, const std::string& message) {
  if (!ok) throw PluginError(QFORGE_STATUS_INTERNAL, message);
}

}  // namespace

QuantResult quantize_layer(const Component& component, const QuantizeRequest& req,
                           const ParamValues& params) {
  const qforge_quantizer* q = component.quantizer();
  if (q == nullptr) throw UsageError(fmt::format("'{}' is not a quantizer", component.desc->id));
  if (!req.weight.defined() || req.weight.dim() != 2)
    throw UsageError(fmt::format("{}: weight must be a 2-D tensor", req.layer_name));
  at::Tensor w = req.weight.to(at::kFloat).contiguous();
  at::Tensor b = req.bias.defined() ? req.bias.to(at::kFloat).contiguous() : at::Tensor();
  // Optional inputs as borrowed float32 views (NULL when not given).
  std::vector<std::unique_ptr<DLView>> views;
  auto view_of = [&](const at::Tensor& t) -> const DLTensor* {
    if (!t.defined()) return nullptr;
    views.push_back(std::make_unique<DLView>(t.to(at::kFloat).contiguous()));
    return views.back()->get();
  };
  DLView wv(w);

  qforge_quantize_input in{};
  in.struct_size = sizeof in;
  in.layer_name = req.layer_name.c_str();
  in.weight = wv.get();
  in.bias = view_of(b);
  in.hessian = view_of(req.hessian);
  in.nsamples = req.nsamples;
  in.inputs_q = view_of(req.inputs_q);
  in.inputs_fp = view_of(req.inputs_fp);
  in.act_stats = view_of(req.act_stats);
  in.act_absmax = view_of(req.act_absmax);
  in.params = params.data();
  in.param_count = params.size();

  Sink sink;
  {
    PluginActivity running(fmt::format("{} ({}) on {}", component.desc->id, component.library,
                                       req.layer_name));
    throw_if_error(q->quantize(services(), &in, &sink.table),
                   fmt::format("{} on {}", component.desc->id, req.layer_name));
  }

  // The result must be complete and consistent with the layer.
  QuantResult r = std::move(sink.result);
  std::string who = fmt::format("{} on {}", component.desc->id, req.layer_name);
  require(sink.has_format, who + ": the quantizer did not name its packed format");
  require(r.dequantized.defined(), who + ": the quantizer returned no dequantized weight");
  require(r.dequantized.sizes() == w.sizes(),
          fmt::format("{}: dequantized weight has shape {}, expected {}", who,
                      fmt::join(r.dequantized.sizes(), "x"), fmt::join(w.sizes(), "x")));
  bool declared = false;
  for (const char* const* f = q->output_formats; f != nullptr && *f != nullptr; ++f)
    declared = declared || r.format == *f;
  require(declared, fmt::format("{}: returned format {}, which the component does not declare",
                                who, r.format));
  r.dequantized = r.dequantized.to(at::kFloat);
  // A non-finite result never reaches a shard: the run stops at this layer and
  // the checkpoint stays at the previous block, resumable once it is fixed.
  require(at::isfinite(r.dequantized).all().item<bool>(),
          fmt::format("{} returned non-finite weights for {}", component.desc->id, req.layer_name));
  for (const auto& [name, t] : r.tensors)
    require(!at::isFloatingType(t.scalar_type()) || at::isfinite(t).all().item<bool>(),
            fmt::format("{} returned non-finite values in {} for {}", component.desc->id, name,
                        req.layer_name));
  return r;
}

namespace {

// A result's tensors as the named DLPack views a layer's create and store take.
struct NamedViews {
  std::vector<std::unique_ptr<DLView>> views;
  std::vector<qforge_named_tensor> named;
  std::vector<const qforge_named_tensor*> pointers;

  explicit NamedViews(const QuantResult& r) {
    named.reserve(r.tensors.size());
    for (const auto& [name, t] : r.tensors) {
      views.push_back(std::make_unique<DLView>(t.contiguous()));
      named.push_back({sizeof(qforge_named_tensor), 0, name.c_str(), views.back()->get()});
    }
    for (const auto& n : named) pointers.push_back(&n);
  }
  uint32_t count() const { return static_cast<uint32_t>(pointers.size()); }
};

}  // namespace

PackedLayer::PackedLayer(const Component& component, const QuantResult& result)
    : vt_(component.inference_layer()), format_(result.format), origin_(result) {
  origin_.dequantized = at::Tensor();
  if (vt_ == nullptr)
    throw UsageError(fmt::format("'{}' is not an inference layer", component.desc->id));
  const NamedViews named(result);
  throw_if_error(vt_->create(services(), result.format.c_str(), result.metadata.c_str(),
                             named.pointers.data(), named.count(), &layer_),
                 fmt::format("{}: creating a layer of format {}", component.desc->id,
                             result.format));
  if (layer_ == nullptr)
    throw PluginError(QFORGE_STATUS_INTERNAL, fmt::format("{}: create returned no layer",
                                                          component.desc->id));
  vt_->shape(layer_, &out_, &in_);
  if (component.desc->get_extension != nullptr) {
    const auto* t = static_cast<const qforge_layer_tunable*>(
        component.desc->get_extension(QFORGE_EXT_LAYER_TUNABLE, 1));
    // Asked for revision 1, the least the host can use (a layer built
    // against an older header answers only up to its own revision); what is
    // newer is found by struct_size: `store` is revision 2, `tune_codes` 3.
    if (t != nullptr && t->struct_size >= offsetof(qforge_layer_tunable, store) && t->param_count &&
        t->param && t->backward_params && t->update)
      tunable_ = t;
  }
}

std::vector<std::pair<std::string, at::Tensor>> PackedLayer::tunable_params() {
  if (tunable_ == nullptr) throw UsageError(fmt::format("the {} layer has no tunable parameters", format_));
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (uint32_t i = 0, n = tunable_->param_count(layer_); i < n; ++i) {
    const char* name = nullptr;
    const DLTensor* value = nullptr;
    throw_if_error(tunable_->param(layer_, i, &name, &value), "tunable param");
    if (name == nullptr || value == nullptr)
      throw PluginError(QFORGE_STATUS_INTERNAL, "tunable param without name or tensor");
    at::Tensor t = borrow_float_cpu(*value, fmt::format("tunable param '{}'", name));
    if (!t.is_contiguous())
      throw PluginError(QFORGE_STATUS_INVALID_ARGUMENT, fmt::format("tunable param '{}' is not contiguous", name));
    out.emplace_back(name, t);
  }
  return out;
}

void PackedLayer::backward_params(const at::Tensor& x, const at::Tensor& gy,
                                  const std::vector<at::Tensor>& grads) {
  const at::Tensor xc = x.reshape({-1, in_}).to(at::kFloat).contiguous();
  const at::Tensor gc = gy.reshape({-1, out_}).to(at::kFloat).contiguous();
  DLView xv(xc), gv(gc);
  std::vector<std::unique_ptr<DLView>> views;
  std::vector<const DLTensor*> pointers;
  for (const at::Tensor& g : grads) {
    views.push_back(std::make_unique<DLView>(g));
    pointers.push_back(views.back()->get());
  }
  throw_if_error(tunable_->backward_params(layer_, xv.get(), gv.get(), pointers.data()),
                 "backward_params");
}

void PackedLayer::update_params() { throw_if_error(tunable_->update(layer_), "update"); }

bool PackedLayer::storable() const {
  return tunable_ != nullptr &&
         tunable_->struct_size >= offsetof(qforge_layer_tunable, store) + sizeof(tunable_->store) &&
         tunable_->store != nullptr;
}

bool PackedLayer::codes_tunable() const {
  return storable() &&
         tunable_->struct_size >= offsetof(qforge_layer_tunable, tune_codes) + sizeof(tunable_->tune_codes) &&
         tunable_->tune_codes != nullptr;
}

void PackedLayer::tune_codes() {
  if (!codes_tunable())
    throw UsageError(fmt::format("the {} layer has no integer codes to tune", format_));
  throw_if_error(tunable_->tune_codes(layer_), fmt::format("tuning the codes of the {} layer", format_));
}

QuantResult PackedLayer::store() {
  if (!storable())
    throw UsageError(fmt::format("the {} layer cannot write its tuned parameters back", format_));
  const NamedViews named(origin_);
  Sink sink;
  throw_if_error(tunable_->store(layer_, named.pointers.data(), named.count(), &sink.table),
                 fmt::format("storing the tuned {} layer", format_));
  QuantResult r = std::move(sink.result);
  require(sink.has_format && r.format == format_,
          fmt::format("store: the {} layer did not write its own format", format_));
  require(r.dequantized.defined() && r.dequantized.size(0) == out_ && r.dequantized.size(1) == in_,
          fmt::format("store: the {} layer wrote no dequantized [{}, {}] weight", format_, out_, in_));
  r.dequantized = r.dequantized.to(at::kFloat);
  r.metrics = origin_.metrics;
  origin_ = r;
  origin_.dequantized = at::Tensor();
  return r;
}

PackedLayer::~PackedLayer() {
  if (layer_) vt_->destroy(layer_);
}

at::Tensor PackedLayer::forward(const at::Tensor& x) const {
  if (x.dim() < 1 || x.size(-1) != in_)
    throw UsageError(fmt::format("forward: input has shape [{}], expected [..., {}]",
                                 fmt::join(x.sizes(), ", "), in_));
  at::Tensor xc = x.to(at::kFloat).contiguous();
  auto shape = xc.sizes().vec();
  shape.back() = out_;
  at::Tensor y = at::empty(shape, xc.options());
  DLView xv(xc), yv(y);
  throw_if_error(vt_->forward(layer_, xv.get(), yv.get()), "forward");
  return y;
}

at::Tensor PackedLayer::backward_input(const at::Tensor& gy) const {
  if (gy.dim() < 1 || gy.size(-1) != out_)
    throw UsageError(fmt::format("backward: gradient has shape [{}], expected [..., {}]",
                                 fmt::join(gy.sizes(), ", "), out_));
  at::Tensor gc = gy.to(at::kFloat).contiguous();
  auto shape = gc.sizes().vec();
  shape.back() = in_;
  at::Tensor gx = at::empty(shape, gc.options());
  DLView gv(gc), xv(gx);
  throw_if_error(vt_->backward_input(layer_, gv.get(), xv.get()), "backward_input");
  return gx;
}

at::Tensor PackedLayer::dequantize() const {
  at::Tensor w = at::empty({out_, in_}, at::kFloat);
  DLView wv(w);
  throw_if_error(vt_->dequantize(layer_, wv.get()), "dequantize");
  return w;
}

}  // namespace qforge::host
