// Optional header-only C++ helpers for plugin authors (no LibTorch needed).
//
// - qforge::Error: throw it to return a status with a chosen code.
// - qforge::guard(): runs a callable and turns every exception into a status,
//   so no exception crosses the ABI (DESIGN.md rule 5).
// - qforge::Params: typed, by-name access to validated parameter values.
// - qforge::quantizer_vtable<T>(), qforge::inference_layer_vtable<T>(),
//   qforge::postprocess_vtable<T>(): the C function tables for a C++ class.
// - QFORGE_DEFINE_PLUGIN(name, version, components...): the entry point.
//
// Tensor conversion to at::Tensor (zero-copy) is in qforge/cpp/torch.hpp; a
// method's shared numerics in qforge/cpp/grid.hpp, hessian.hpp and
// layer_input.hpp.
#ifndef QFORGE_CPP_PLUGIN_HPP
#define QFORGE_CPP_PLUGIN_HPP

#include <qforge/qforge.h>

#include <cstring>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>
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

// Wraps the output sink of a quantize call; checks every host status.
class QuantizeOutput {
 public:
  QuantizeOutput(const qforge_host* host, const qforge_quantize_output* out)
      : host_(host), out_(out) {}
  void set_format(const std::string& id, const std::string& metadata_json) const {
    check(host_, out_->set_format(out_, id.c_str(), metadata_json.c_str()));
  }
  void add_tensor(const std::string& name, DLManagedTensor* t) const {
    check(host_, out_->add_tensor(out_, name.c_str(), t));
  }
  void set_dequantized(DLManagedTensor* t) const {
    check(host_, out_->set_dequantized(out_, t));
  }
  void set_metric(const std::string& name, double value) const {
    check(host_, out_->set_metric(out_, name.c_str(), value));
  }

 private:
  const qforge_host* host_;
  const qforge_quantize_output* out_;
};

// A quantizer class T provides
//   static const char* const* formats();   // NULL-terminated
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
  static const qforge_quantizer table = {sizeof(qforge_quantizer), 0, T::formats(),
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
template <class T>
const qforge_inference_layer* inference_layer_vtable() {
  struct Instance {
    const qforge_host* host;
    T layer;
  };
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
      sizeof(qforge_inference_layer), 0, T::formats(), &Thunk::create, &Thunk::destroy,
      &Thunk::shape, &Thunk::forward, &Thunk::backward_input, &Thunk::dequantize};
  return &table;
}

// A post-process class T provides
//   static void run(const Host&, const qforge_model_services&, const Params&);
template <class T>
const qforge_postprocess* postprocess_vtable() {
  struct Thunk {
    static qforge_status* run(const qforge_host* host, const qforge_model_services* model,
                              const qforge_param_value* const* params, uint32_t count) {
      return guard(host, [&] { T::run(Host(host), *model, Params(params, count)); });
    }
  };
  static const qforge_postprocess table = {sizeof(qforge_postprocess), 0, &Thunk::run};
  return &table;
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

}  // namespace qforge

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
