// Optional header-only C++ helpers for plugin authors (no LibTorch needed).
//
// - qforge::Error: throw it to return a status with a chosen code.
// - qforge::guard(): runs a callable and turns every exception into a status,
//   so no exception crosses the ABI (DESIGN.md rule 5).
// - qforge::Params: typed, by-name access to validated parameter values.
// - qforge::quantizer_vtable<T>(), qforge::inference_layer_vtable<T>(),
//   qforge::postprocess_vtable<T>(): the C function tables for a C++ class.
// - QFORGE_PLUGIN(name, version, describe): the entry point, with the
//   components described through qforge::Plugin (a builder: no hand-counted
//   arrays); QFORGE_DEFINE_PLUGIN for a hand-built ComponentList.
//
// Tensor conversion to at::Tensor (zero-copy) is in qforge/cpp/torch.hpp; a
// method's shared numerics in qforge/cpp/grid.hpp, hessian.hpp and
// layer_input.hpp.
#ifndef QFORGE_CPP_PLUGIN_HPP
#define QFORGE_CPP_PLUGIN_HPP

#include <qforge/ext/schemes.h>
#include <qforge/qforge.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace qforge {

// An error with a status code; what() is the message.
class Error : public std::runtime_error {
 public:
  Error(int32_t code, const std::string& message) : std::runtime_error(message), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

[[noreturn]] inline void invalid_argument(const std::string& message) {
  throw Error(QFORGE_STATUS_INVALID_ARGUMENT, message);
}

// The host handed to this plugin's `init` (set by QFORGE_DEFINE_PLUGIN).
inline const qforge_host*& plugin_host() noexcept {
  static const qforge_host* host = nullptr;
  return host;
}

// Runs f(); returns NULL on success, else a status made by `host`.
template <class F>
qforge_status* guard(const qforge_host* host, F&& f) noexcept {
  int32_t code = QFORGE_STATUS_INTERNAL;
  const char* message = "unknown exception";
  std::string text;
  try {
    f();
    return nullptr;
  } catch (const Error& e) {
    code = e.code();
    text = e.what();
    message = text.c_str();
  } catch (const std::bad_alloc&) {
    code = QFORGE_STATUS_OUT_OF_MEMORY;
    message = "out of memory";
  } catch (const std::exception& e) {
    try {
      text = e.what();
      message = text.c_str();
    } catch (...) {
      message = "exception (message lost: out of memory)";
    }
  } catch (...) {
  }
  if (host == nullptr) host = plugin_host();
  return host != nullptr ? host->status_create(host, code, message) : nullptr;
}

// Thin wrapper over the host services.
class Host {
 public:
  explicit Host(const qforge_host* host) : host_(host) {}
  const qforge_host* get() const { return host_; }
  void log(int32_t level, const std::string& message) const {
    host_->log(host_, level, message.c_str());
  }
  void progress(const char* task, uint64_t done, uint64_t total) const {
    host_->progress(host_, task, done, total);
  }
  // Throws Error(CANCELLED) once the user asked to stop.
  void check_cancelled() const {
    if (host_->is_cancelled(host_)) throw Error(QFORGE_STATUS_CANCELLED, "cancelled");
  }

 private:
  const qforge_host* host_;
};

// Throws the host status `s` (if any) as an Error, releasing it.
inline void check(const qforge_host* host, qforge_status* s) {
  if (s == nullptr) return;
  Error e(host->status_code(host, s), host->status_message(host, s));
  host->status_destroy(host, s);
  throw e;
}

// By-name access to the validated parameter values of one call.
class Params {
 public:
  Params(const qforge_param_value* const* values, uint32_t count)
      : values_(values), count_(count) {}

  const qforge_param_value& at(const char* name, int32_t type) const {
    for (uint32_t k = 0; k < count_; ++k) {
      if (std::strcmp(values_[k]->name, name) == 0) {
        if (values_[k]->type != type)
          invalid_argument(std::string("parameter '") + name + "' has an unexpected type");
        return *values_[k];
      }
    }
    invalid_argument(std::string("parameter '") + name + "' is missing");
  }
  bool get_bool(const char* name) const { return at(name, QFORGE_PARAM_BOOL).b != 0; }
  int64_t get_int(const char* name) const { return at(name, QFORGE_PARAM_INT).i; }
  double get_float(const char* name) const { return at(name, QFORGE_PARAM_FLOAT).f; }
  std::string get_string(const char* name) const { return at(name, QFORGE_PARAM_STRING).s; }
  std::string get_enum(const char* name) const { return at(name, QFORGE_PARAM_ENUM).s; }
  std::string get_path(const char* name) const { return at(name, QFORGE_PARAM_PATH).s; }
  std::vector<int64_t> get_ints(const char* name) const {
    const auto& v = at(name, QFORGE_PARAM_INT_LIST);
    return std::vector<int64_t>(v.ints, v.ints + v.count);
  }
  std::vector<double> get_floats(const char* name) const {
    const auto& v = at(name, QFORGE_PARAM_FLOAT_LIST);
    return std::vector<double>(v.floats, v.floats + v.count);
  }
  std::vector<std::string> get_strings(const char* name) const {
    const auto& v = at(name, QFORGE_PARAM_STRING_LIST);
    return std::vector<std::string>(v.strings, v.strings + v.count);
  }

 private:
  const qforge_param_value* const* values_;
  uint32_t count_;
};

// How a tensor type of another library becomes a DLManagedTensor the host
// owns: qforge/cpp/torch.hpp specializes it for at::Tensor.
template <class Tensor>
struct TensorExport;

// Wraps the output sink of a quantize call; checks every host status.
class QuantizeOutput {
 public:
  QuantizeOutput(const qforge_host* host, const qforge_quantize_output* out)
      : host_(host), out_(out) {}
  void set_format(const std::string& id, const std::string& metadata_json) const {
    check(host_, out_->set_format(out_, id.c_str(), metadata_json.c_str()));
  }
  // Metadata as any JSON value with dump(), e.g. an nlohmann::json or
  // qforge::Metadata (qforge/cpp/metadata.hpp).
  template <class Json, class = decltype(std::declval<const Json&>().dump())>
  void set_format(const std::string& id, const Json& metadata) const {
    set_format(id, std::string(metadata.dump()));
  }
  void add_tensor(const std::string& name, DLManagedTensor* t) const {
    check(host_, out_->add_tensor(out_, name.c_str(), t));
  }
  void set_dequantized(DLManagedTensor* t) const {
    check(host_, out_->set_dequantized(out_, t));
  }
  // The same for a library tensor (at::Tensor with qforge/cpp/torch.hpp): the
  // host gets its own reference, the caller keeps its tensor.
  template <class Tensor, class = decltype(TensorExport<Tensor>::make(std::declval<const Tensor&>()))>
  void add_tensor(const std::string& name, const Tensor& t) const {
    add_tensor(name, TensorExport<Tensor>::make(t));
  }
  template <class Tensor, class = decltype(TensorExport<Tensor>::make(std::declval<const Tensor&>()))>
  void set_dequantized(const Tensor& t) const {
    set_dequantized(TensorExport<Tensor>::make(t));
  }
  void set_metric(const std::string& name, double value) const {
    check(host_, out_->set_metric(out_, name.c_str(), value));
  }

 private:
  const qforge_host* host_;
  const qforge_quantize_output* out_;
};

// T::formats() when T declares it (else the formats come from
// ComponentBuilder::formats()).
template <class T, class = void>
struct HasFormats : std::false_type {};
template <class T>
struct HasFormats<T, std::void_t<decltype(T::formats())>> : std::true_type {};
template <class T>
const char* const* formats_of() {
  if constexpr (HasFormats<T>::value) return T::formats();
  else return nullptr;
}

// A quantizer class T provides
//   static const char* const* formats();   // NULL-terminated (or see ComponentBuilder)
//   static void quantize(const Host&, const qforge_quantize_input&, const Params&,
//                        const QuantizeOutput&);
template <class T>
const qforge_quantizer* quantizer_vtable() {
  struct Thunk {
    static qforge_status* quantize(const qforge_host* host, const qforge_quantize_input* in,
                                   const qforge_quantize_output* out) {
      return guard(host, [&] {
        T::quantize(Host(host), *in, Params(in->params, in->param_count),
                    QuantizeOutput(host, out));
      });
    }
  };
  static const qforge_quantizer table = {sizeof(qforge_quantizer), 0, formats_of<T>(),
                                         &Thunk::quantize};
  return &table;
}

// An inference-layer class T provides
//   static const char* const* formats();
//   T(const Host&, const std::string& format, const std::string& metadata_json,
//     const std::vector<const qforge_named_tensor*>& tensors);
//   int64_t out_features() const; int64_t in_features() const;
//   void forward(const DLTensor& x, const DLTensor& y) const;
//   void backward_input(const DLTensor& grad_y, const DLTensor& grad_x) const;
//   void dequantize(const DLTensor& weight) const;
// What a qforge_layer* of inference-layer class T points to.
template <class T>
struct LayerInstance {
  const qforge_host* host;
  T layer;
};

template <class T>
const qforge_inference_layer* inference_layer_vtable() {
  using Instance = LayerInstance<T>;
  struct Thunk {
    static const Instance* self(const qforge_layer* l) {
      return reinterpret_cast<const Instance*>(l);
    }
    static qforge_status* create(const qforge_host* host, const char* format,
                                 const char* metadata, const qforge_named_tensor* const* tensors,
                                 uint32_t count, qforge_layer** out) {
      return guard(host, [&] {
        std::vector<const qforge_named_tensor*> list(tensors, tensors + count);
        auto* inst = new Instance{host, T(Host(host), format, metadata ? metadata : "{}", list)};
        *out = reinterpret_cast<qforge_layer*>(inst);
      });
    }
    static void destroy(qforge_layer* l) { delete reinterpret_cast<Instance*>(l); }
    static void shape(const qforge_layer* l, int64_t* out_f, int64_t* in_f) {
      *out_f = self(l)->layer.out_features();
      *in_f = self(l)->layer.in_features();
    }
    static qforge_status* forward(const qforge_layer* l, const DLTensor* x, const DLTensor* y) {
      return guard(self(l)->host, [&] { self(l)->layer.forward(*x, *y); });
    }
    static qforge_status* backward_input(const qforge_layer* l, const DLTensor* gy,
                                         const DLTensor* gx) {
      return guard(self(l)->host, [&] { self(l)->layer.backward_input(*gy, *gx); });
    }
    static qforge_status* dequantize(const qforge_layer* l, const DLTensor* w) {
      return guard(self(l)->host, [&] { self(l)->layer.dequantize(*w); });
    }
  };
  static const qforge_inference_layer table = {
      sizeof(qforge_inference_layer), 0, formats_of<T>(), &Thunk::create, &Thunk::destroy,
      &Thunk::shape, &Thunk::forward, &Thunk::backward_input, &Thunk::dequantize};
  return &table;
}

// A post-process class T provides
//   static void run(const Host&, const qforge_model_services&, const Params&);
// and, for the per-block hook (ABI 1.1), optionally
//   static void run_block(const Host&, const qforge_model_services&, uint32_t block, const Params&);
template <class T, class = void>
struct HasRunBlock : std::false_type {};
template <class T>
struct HasRunBlock<T, std::void_t<decltype(&T::run_block)>> : std::true_type {};

template <class T>
const qforge_postprocess* postprocess_vtable() {
  struct Thunk {
    static qforge_status* run(const qforge_host* host, const qforge_model_services* model,
                              const qforge_param_value* const* params, uint32_t count) {
      return guard(host, [&] { T::run(Host(host), *model, Params(params, count)); });
    }
    static qforge_status* run_block(const qforge_host* host, const qforge_model_services* model,
                                    uint32_t block, const qforge_param_value* const* params,
                                    uint32_t count) {
      return guard(host, [&] {
        if constexpr (HasRunBlock<T>::value) T::run_block(Host(host), *model, block, Params(params, count));
      });
    }
  };
  static const qforge_postprocess table = {sizeof(qforge_postprocess), 0, &Thunk::run,
                                           HasRunBlock<T>::value ? &Thunk::run_block : nullptr};
  return &table;
}

// A pre-process class T (ABI 1.2) provides
//   static void run_block(const Host&, const qforge_model_services&, uint32_t block, const Params&);
template <class T>
const qforge_preprocess* preprocess_vtable() {
  struct Thunk {
    static qforge_status* run_block(const qforge_host* host, const qforge_model_services* model,
                                    uint32_t block, const qforge_param_value* const* params,
                                    uint32_t count) {
      return guard(host, [&] { T::run_block(Host(host), *model, block, Params(params, count)); });
    }
  };
  static const qforge_preprocess table = {sizeof(qforge_preprocess), 0, &Thunk::run_block};
  return &table;
}

// A quantizer's get_extension answer for its named schemes
// (qforge/ext/schemes.h):
//   const void* extension(const char* id, uint32_t revision) {
//     return qforge::offer_schemes(id, revision, &kSchemes);
//   }
inline const void* offer_schemes(const char* id, uint32_t revision,
                                 const qforge_quantizer_schemes* schemes) {
  return id != nullptr && std::strcmp(id, QFORGE_EXT_SCHEMES) == 0 &&
                 revision <= QFORGE_EXT_SCHEMES_REVISION
             ? schemes
             : nullptr;
}

// Fills the fields every component description shares.
inline qforge_component_desc component(int32_t kind, const char* id, const char* name,
                                       const char* version, const char* vendor,
                                       const char* license, const char* description,
                                       const char* const* features,
                                       const qforge_param_desc* const* params,
                                       uint32_t param_count,
                                       const void* vtable) {
  qforge_component_desc d;
  std::memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  d.kind = kind;
  d.min_host_minor = 0;
  d.id = id;
  d.name = name;
  d.version = version;
  d.vendor = vendor;
  d.license = license;
  d.description = description;
  d.features = features;
  d.params = params;
  d.param_count = param_count;
  d.vtable = vtable;
  return d;
}

// Parameter description helpers (all fields, struct_size filled).
inline qforge_param_desc param(int32_t type, const char* name, const char* help,
                               const char* default_value, const char* const* choices = nullptr,
                               uint32_t flags = 0, double min = 0, double max = 0) {
  qforge_param_desc p;
  std::memset(&p, 0, sizeof p);
  p.struct_size = sizeof p;
  p.type = type;
  p.name = name;
  p.help = help;
  p.default_value = default_value;
  p.choices = choices;
  p.flags = flags;
  p.min = min;
  p.max = max;
  return p;
}
inline qforge_param_desc param_range(int32_t type, const char* name, const char* help,
                                     const char* default_value, double min, double max) {
  return param(type, name, help, default_value, nullptr,
               QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX, min, max);
}

// DLPack dtype of a C++ element type.
template <class T> DLDataType dl_dtype_of();
template <> inline DLDataType dl_dtype_of<float>() { return DLDataType{kDLFloat, 32, 1}; }
template <> inline DLDataType dl_dtype_of<double>() { return DLDataType{kDLFloat, 64, 1}; }
template <> inline DLDataType dl_dtype_of<int8_t>() { return DLDataType{kDLInt, 8, 1}; }
template <> inline DLDataType dl_dtype_of<int32_t>() { return DLDataType{kDLInt, 32, 1}; }
template <> inline DLDataType dl_dtype_of<int64_t>() { return DLDataType{kDLInt, 64, 1}; }
template <> inline DLDataType dl_dtype_of<uint8_t>() { return DLDataType{kDLUInt, 8, 1}; }

inline bool same_dtype(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

// "float32", "int32", ...; "DLPack code C, bits B, lanes L" for the rest.
inline std::string dtype_str(DLDataType t) {
  const char* kind = t.code == kDLFloat    ? "float"
                     : t.code == kDLBfloat ? "bfloat"
                     : t.code == kDLInt    ? "int"
                     : t.code == kDLUInt   ? "uint"
                                           : nullptr;
  if (kind != nullptr && t.lanes == 1) return kind + std::to_string(t.bits);
  return "DLPack code " + std::to_string(t.code) + ", bits " + std::to_string(t.bits) +
         ", lanes " + std::to_string(t.lanes);
}

// "[2, 3]" for any sequence of sizes (std::vector, at::IntArrayRef).
template <class Sizes>
std::string shape_str(const Sizes& sizes) {
  std::string text = "[";
  for (size_t k = 0; k < sizes.size(); ++k) text += (k ? ", " : "") + std::to_string(sizes[k]);
  return text + "]";
}

// Checks that `t` is on the CPU (else UNSUPPORTED: a valid request a CPU-only
// plugin can't serve) and of `dtype` (else INVALID_ARGUMENT).
inline void require_cpu_dtype(const DLTensor& t, DLDataType dtype, const std::string& what) {
  if (t.device.device_type != kDLCPU)
    throw Error(QFORGE_STATUS_UNSUPPORTED, what + " must be on the CPU");
  if (!same_dtype(t.dtype, dtype))
    invalid_argument(what + " must be " + dtype_str(dtype) + ", got " + dtype_str(t.dtype));
}

// Checks that `t` is a CPU tensor of element type T with `ndim` dimensions and
// returns a pointer to element 0 (strides are the caller's business).
template <class T>
const T* checked_data(const DLTensor& t, int32_t ndim, const char* what) {
  require_cpu_dtype(t, dl_dtype_of<T>(), what);
  if (t.ndim != ndim)
    invalid_argument(std::string(what) + ": expected " + std::to_string(ndim) + " dimensions");
  return reinterpret_cast<const T*>(static_cast<const char*>(t.data) + t.byte_offset);
}

// A new contiguous CPU tensor that owns its storage, for handing to the host
// (add_tensor / set_dequantized); *data receives its zero-filled elements.
template <class T>
DLManagedTensor* new_tensor(const std::vector<int64_t>& shape, T** data) {
  struct Holder {
    std::vector<T> storage;
    std::vector<int64_t> shape, strides;
    DLManagedTensor managed;
  };
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) invalid_argument("new_tensor: negative dimension");
    n *= d;
  }
  auto* h = new Holder{std::vector<T>(static_cast<size_t>(n)), shape,
                       std::vector<int64_t>(shape.size(), 1), {}};
  for (int k = static_cast<int>(shape.size()) - 2; k >= 0; --k)
    h->strides[k] = h->strides[k + 1] * shape[k + 1];
  DLTensor& t = h->managed.dl_tensor;
  t.data = h->storage.data();
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = dl_dtype_of<T>();
  t.shape = h->shape.data();
  t.strides = h->strides.data();
  t.byte_offset = 0;
  h->managed.manager_ctx = h;
  h->managed.deleter = [](DLManagedTensor* self) { delete static_cast<Holder*>(self->manager_ctx); };
  *data = h->storage.data();
  return &h->managed;
}

// The list of components a plugin returns from its entry; built once.
using ComponentList = std::vector<qforge_component_desc>;

// What `qforge plugins` shows about a component.
struct About {
  const char* id;           // reverse-DNS, e.g. "org.example.ternary"
  const char* name;         // short human name
  const char* version;      // e.g. "0.1.0"
  const char* vendor;
  const char* license;      // SPDX, e.g. "MIT"
  const char* description;  // one paragraph; cite the paper
};

// One component being described: its feature tags and its parameter schema
// (validated by the host before every call), kept in storage it owns.
class ComponentBuilder {
 public:
  ComponentBuilder(int32_t kind, const About& about, const void* vtable)
      : kind_(kind), about_(about), vtable_(vtable) {}

  // The packed formats a quantizer writes or an inference layer reads (instead
  // of a static T::formats()).
  ComponentBuilder& formats(std::initializer_list<const char*> ids) {
    for (const char* id : ids) formats_.push_back(keep(id));
    return *this;
  }
  // Tags from component.h (QFORGE_FEATURE_*) or descriptive ones.
  ComponentBuilder& features(std::initializer_list<const char*> tags) {
    for (const char* t : tags) features_.push_back(keep(t));
    return *this;
  }
  ComponentBuilder& param_int(const char* name, int64_t fallback, int64_t min, int64_t max,
                              const char* help) {
    return add(param_range(QFORGE_PARAM_INT, name, help, keep(std::to_string(fallback)),
                           static_cast<double>(min), static_cast<double>(max)));
  }
  ComponentBuilder& param_float(const char* name, double fallback, double min, double max,
                                const char* help) {
    return add(param_range(QFORGE_PARAM_FLOAT, name, help, keep(shortest(fallback)), min, max));
  }
  ComponentBuilder& param_bool(const char* name, bool fallback, const char* help) {
    return add(param(QFORGE_PARAM_BOOL, name, help, fallback ? "true" : "false"));
  }
  ComponentBuilder& param_string(const char* name, const char* fallback, const char* help) {
    return add(param(QFORGE_PARAM_STRING, name, help, keep(fallback)));
  }
  // Comma-separated lists; an empty default is the empty list.
  ComponentBuilder& param_strings(const char* name, const char* fallback, const char* help) {
    return add(param(QFORGE_PARAM_STRING_LIST, name, help, keep(fallback)));
  }
  ComponentBuilder& param_ints(const char* name, const char* fallback, int64_t min, int64_t max,
                               const char* help) {
    return add(param_range(QFORGE_PARAM_INT_LIST, name, help, keep(fallback),
                           static_cast<double>(min), static_cast<double>(max)));
  }
  // The component's get_extension: the component extensions it offers (e.g.
  // an inference layer's qforge.layer.tunable table, qforge/cpp/train.hpp).
  ComponentBuilder& get_extension(const void* (*fn)(const char* id, uint32_t revision)) {
    get_extension_ = fn;
    return *this;
  }
  // The lowest host ABI minor the component needs (e.g. 1 for qforge/ext/train.h).
  ComponentBuilder& min_host_minor(uint32_t minor) {
    min_host_minor_ = minor;
    return *this;
  }
  ComponentBuilder& param_enum(const char* name, const char* fallback,
                               std::initializer_list<const char*> choices, const char* help) {
    choice_lists_.emplace_back();
    for (const char* c : choices) choice_lists_.back().push_back(keep(c));
    choice_lists_.back().push_back(nullptr);
    return add(param(QFORGE_PARAM_ENUM, name, help, keep(fallback), choice_lists_.back().data()));
  }

  // The descriptor; points into this builder, which must stay where it is.
  qforge_component_desc desc() {
    param_ptrs_.clear();
    for (const auto& p : params_) param_ptrs_.push_back(&p);
    feature_list_ = features_;
    feature_list_.push_back(nullptr);
    qforge_component_desc d =
        component(kind_, about_.id, about_.name, about_.version, about_.vendor, about_.license,
                  about_.description, feature_list_.data(),
                  param_ptrs_.empty() ? nullptr : param_ptrs_.data(),
                  static_cast<uint32_t>(param_ptrs_.size()), with_formats());
    d.min_host_minor = min_host_minor_;
    d.get_extension = get_extension_;
    return d;
  }

 private:
  ComponentBuilder& add(const qforge_param_desc& p) {
    params_.push_back(p);
    return *this;
  }
  const char* keep(const std::string& text) { return strings_.emplace_back(text).c_str(); }
  // The shortest decimal that reads back as `v` ("0.01", not "0.01000000000000000021").
  static std::string shortest(double v) {
    char buf[32];
    for (int digits = 1; digits <= 17; ++digits) {
      std::snprintf(buf, sizeof buf, "%.*g", digits, v);
      if (std::strtod(buf, nullptr) == v) break;
    }
    return buf;
  }

  // The function table, copied here with formats() when they were given.
  const void* with_formats() {
    if (formats_.empty()) return vtable_;
    format_list_ = formats_;
    format_list_.push_back(nullptr);
    if (kind_ == QFORGE_COMPONENT_QUANTIZER) {
      quantizer_ = *static_cast<const qforge_quantizer*>(vtable_);
      quantizer_.output_formats = format_list_.data();
      return &quantizer_;
    }
    if (kind_ == QFORGE_COMPONENT_INFERENCE_LAYER) {
      layer_ = *static_cast<const qforge_inference_layer*>(vtable_);
      layer_.formats = format_list_.data();
      return &layer_;
    }
    return vtable_;
  }

  int32_t kind_;
  About about_;
  const void* vtable_;
  qforge_quantizer quantizer_{};
  qforge_inference_layer layer_{};
  std::vector<const char*> formats_, format_list_;
  std::deque<std::string> strings_;  // deque: pointers into it stay valid
  std::deque<qforge_param_desc> params_;
  uint32_t min_host_minor_ = 0;
  const void* (*get_extension_)(const char*, uint32_t) = nullptr;
  std::deque<std::vector<const char*>> choice_lists_;
  std::vector<const char*> features_, feature_list_;
  std::vector<const qforge_param_desc*> param_ptrs_;
};

// A plugin's components, described in one function (see QFORGE_PLUGIN):
//
//   p.quantizer<Ternary>({"org.example.ternary", "Ternary", "0.1.0", "Me", "MIT", "..."})
//       .formats({"org.example.ternary/1"})
//       .features({QFORGE_FEATURE_NEEDS_HESSIAN})
//       .param_int("group_size", 32, -1, 4096, "input columns sharing one scale");
//   p.inference_layer<TernaryLayer>({"org.example.ternary.layer", ...})
//       .formats({"org.example.ternary/1"});
class Plugin {
 public:
  template <class T>
  ComponentBuilder& quantizer(const About& about) {
    return parts_.emplace_back(QFORGE_COMPONENT_QUANTIZER, about, quantizer_vtable<T>());
  }
  template <class T>
  ComponentBuilder& inference_layer(const About& about) {
    return parts_.emplace_back(QFORGE_COMPONENT_INFERENCE_LAYER, about,
                               inference_layer_vtable<T>());
  }
  template <class T>
  ComponentBuilder& postprocess(const About& about) {
    return parts_.emplace_back(QFORGE_COMPONENT_POSTPROCESS, about, postprocess_vtable<T>());
  }
  // A pre-process needs a host of ABI 1.2 (set here).
  template <class T>
  ComponentBuilder& preprocess(const About& about) {
    return parts_.emplace_back(QFORGE_COMPONENT_PREPROCESS, about, preprocess_vtable<T>())
        .min_host_minor(2);
  }
  const ComponentList& components() {
    if (list_.empty())
      for (auto& part : parts_) list_.push_back(part.desc());
    return list_;
  }

 private:
  std::deque<ComponentBuilder> parts_;  // deque: descriptors point into them
  ComponentList list_;
};

}  // namespace qforge

// Defines the entry point of a plugin whose components `describe(qforge::Plugin&)`
// declares (called once, during the plugin's init).
#define QFORGE_PLUGIN(plugin_name, plugin_version, describe)          \
  namespace {                                                         \
  const qforge::ComponentList& qforge_cpp_components() {              \
    static qforge::Plugin plugin;                                     \
    static const bool described = (describe(plugin), true);           \
    (void)described;                                                  \
    return plugin.components();                                       \
  }                                                                   \
  }                                                                   \
  QFORGE_DEFINE_PLUGIN(plugin_name, plugin_version, qforge_cpp_components)

// Defines the entry point. `components_fn` is a function returning
// `const qforge::ComponentList&` (built on first call, after init).
#define QFORGE_DEFINE_PLUGIN(plugin_name, plugin_version, components_fn)                   \
  namespace {                                                                             \
  qforge_status* qforge_cpp_init(const qforge_host* host) {                              \
    qforge::plugin_host() = host;                                                         \
    return qforge::guard(host, [] { (void)components_fn(); });                            \
  }                                                                                       \
  uint32_t qforge_cpp_count() { return static_cast<uint32_t>(components_fn().size()); }  \
  const qforge_component_desc* qforge_cpp_get(uint32_t i) {                               \
    const auto& list = components_fn();                                                   \
    return i < list.size() ? &list[i] : nullptr;                                          \
  }                                                                                       \
  }                                                                                       \
  extern "C" QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void) {      \
    static const qforge_plugin_entry entry = {                                            \
        sizeof(qforge_plugin_entry), QFORGE_ABI_MAJOR, QFORGE_ABI_MINOR, 0, plugin_name,  \
        plugin_version, &qforge_cpp_init, nullptr, &qforge_cpp_count, &qforge_cpp_get};   \
    return &entry;                                                                        \
  }

#endif  // QFORGE_CPP_PLUGIN_HPP
