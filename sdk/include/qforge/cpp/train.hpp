// C++ helpers for post-processes that train (qforge/ext/train.h): the host's
// training table behind a small RAII class, and adapter_vtable<T>() for an
// adapter written as a C++ class. Header-only; exceptions stay on this side
// of the ABI (every thunk runs under qforge::guard).
#ifndef QFORGE_CPP_TRAIN_HPP
#define QFORGE_CPP_TRAIN_HPP

#include <qforge/ext/train.h>

#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "plugin.hpp"

namespace qforge {

// The host's qforge.host.train; Error(UNSUPPORTED) when the host lacks it.
inline const qforge_host_train& host_train(const Host& host) {
  // Revision 1 is all a trainer needs; the revision-2 calls check the size.
  const void* t = host.get()->abi_minor >= 1
                      ? host.get()->get_extension(host.get(), QFORGE_EXT_HOST_TRAIN, 1)
                      : nullptr;
  if (t == nullptr)
    throw Error(QFORGE_STATUS_UNSUPPORTED, "this host does not offer " QFORGE_EXT_HOST_TRAIN);
  return *static_cast<const qforge_host_train*>(t);
}

// An adapter class T provides
//   uint32_t param_count() const;
//   void param(uint32_t i, const char** name, const DLTensor** value) const;
//   void forward(bool training, uint64_t seed, const DLTensor& x, const DLTensor& y) const;
//   void backward(bool training, uint64_t seed, const DLTensor& x, const DLTensor& grad_y,
//                 const DLTensor& grad_x, const DLTensor* const* grads) const;
//   void merge(const DLTensor& weight) const;
//   const char* export_format(const char** metadata_json) const;
template <class T>
const qforge_adapter_vtable* adapter_vtable() {
  struct Thunk {
    static const T& self(const qforge_adapter* a) { return *reinterpret_cast<const T*>(a); }
    static uint32_t param_count(const qforge_adapter* a) { return self(a).param_count(); }
    static qforge_status* param(const qforge_adapter* a, uint32_t i, const char** name,
                                const DLTensor** value) {
      return guard(nullptr, [&] { self(a).param(i, name, value); });
    }
    static qforge_status* forward(const qforge_adapter* a, qforge_bool training, uint64_t seed,
                                  const DLTensor* x, const DLTensor* y) {
      return guard(nullptr, [&] { self(a).forward(training != 0, seed, *x, *y); });
    }
    static qforge_status* backward(const qforge_adapter* a, qforge_bool training, uint64_t seed,
                                   const DLTensor* x, const DLTensor* gy, const DLTensor* gx,
                                   const DLTensor* const* grads) {
      return guard(nullptr, [&] { self(a).backward(training != 0, seed, *x, *gy, *gx, grads); });
    }
    static qforge_status* merge(const qforge_adapter* a, const DLTensor* w) {
      return guard(nullptr, [&] { self(a).merge(*w); });
    }
    static const char* export_format(const qforge_adapter* a, const char** metadata) {
      try {
        return self(a).export_format(metadata);
      } catch (...) {
        return nullptr;
      }
    }
    static void destroy(qforge_adapter* a) { delete reinterpret_cast<T*>(a); }
  };
  static const qforge_adapter_vtable table = {
      sizeof(qforge_adapter_vtable), 0, &Thunk::param_count, &Thunk::param, &Thunk::forward,
      &Thunk::backward, &Thunk::merge, &Thunk::export_format, &Thunk::destroy};
  return &table;
}

// The qforge.layer.tunable table of inference-layer class T (made by
// inference_layer_vtable<T>), which provides
//   uint32_t param_count() const;
//   void param(uint32_t i, const char** name, const DLTensor** value);
//   void backward_params(const DLTensor& x, const DLTensor& grad_y, const DLTensor* const* grads);
//   void update();
//   void store(const std::vector<const qforge_named_tensor*>& original,
//              const QuantizeOutput& out);   // revision 2
// and, when its format has integer codes to tune (revision 3),
//   void tune_codes();
template <class T, class = void>
struct has_tune_codes : std::false_type {};
template <class T>
struct has_tune_codes<T, std::void_t<decltype(std::declval<T&>().tune_codes())>> : std::true_type {};

template <class T>
const qforge_layer_tunable* layer_tunable_table() {
  struct Thunk {
    static LayerInstance<T>& self(qforge_layer* l) { return *reinterpret_cast<LayerInstance<T>*>(l); }
    static uint32_t param_count(const qforge_layer* l) {
      return reinterpret_cast<const LayerInstance<T>*>(l)->layer.param_count();
    }
    static qforge_status* param(qforge_layer* l, uint32_t i, const char** name,
                                const DLTensor** value) {
      return guard(self(l).host, [&] { self(l).layer.param(i, name, value); });
    }
    static qforge_status* backward_params(qforge_layer* l, const DLTensor* x, const DLTensor* gy,
                                          const DLTensor* const* grads) {
      return guard(self(l).host, [&] { self(l).layer.backward_params(*x, *gy, grads); });
    }
    static qforge_status* update(qforge_layer* l) {
      return guard(self(l).host, [&] { self(l).layer.update(); });
    }
    static qforge_status* store(qforge_layer* l, const qforge_named_tensor* const* original,
                                uint32_t count, const qforge_quantize_output* out) {
      return guard(self(l).host, [&] {
        if (out == nullptr || (count > 0 && original == nullptr))
          invalid_argument("store: NULL argument");
        self(l).layer.store(std::vector<const qforge_named_tensor*>(original, original + count),
                            QuantizeOutput(self(l).host, out));
      });
    }
  };
  static qforge_status* (*const tune_codes)(qforge_layer*) = [] {
    if constexpr (has_tune_codes<T>::value)
      return +[](qforge_layer* l) -> qforge_status* {
        return guard(Thunk::self(l).host, [&] { Thunk::self(l).layer.tune_codes(); });
      };
    else
      return static_cast<qforge_status* (*)(qforge_layer*)>(nullptr);
  }();
  static const qforge_layer_tunable table = {sizeof(qforge_layer_tunable), 0, &Thunk::param_count,
                                             &Thunk::param, &Thunk::backward_params,
                                             &Thunk::update, &Thunk::store, tune_codes};
  return &table;
}

// A component's get_extension that offers T's qforge.layer.tunable table
// (ComponentBuilder::get_extension(&tunable_extension<T>)).
template <class T>
const void* tunable_extension(const char* id, uint32_t revision) {
  if (id != nullptr && std::strcmp(id, QFORGE_EXT_LAYER_TUNABLE) == 0 &&
      revision <= QFORGE_EXT_LAYER_TUNABLE_REVISION)
    return layer_tunable_table<T>();
  return nullptr;
}

// One training run over the whole model (qforge_host_train), throwing Error
// for a host status.
class Trainer {
 public:
  Trainer(const Host& host, const qforge_model_services& model, const qforge_train_config& config)
      : host_(host), t_(host_train(host)) {
    check(host_.get(), t_.trainer_create(&model, &config, &trainer_));
  }
  ~Trainer() { t_.trainer_destroy(trainer_); }
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Hands `adapter` (of adapter class A) to the host, which owns it from here.
  template <class A>
  void attach(const char* layer, std::unique_ptr<A> adapter) {
    check(host_.get(), t_.attach_adapter(trainer_, layer,
                                         reinterpret_cast<qforge_adapter*>(adapter.release()),
                                         adapter_vtable<A>()));
  }
  uint64_t batch_count() const { return t_.batch_count(trainer_); }
  void set_schedule(uint64_t warmup_steps, uint64_t total_steps) {
    check(host_.get(), t_.set_schedule(trainer_, warmup_steps, total_steps));
  }
  void loss_backward(uint64_t epoch, uint64_t index, const std::vector<qforge_loss_term>& terms,
                     double scale, double* values) {
    std::vector<const qforge_loss_term*> pointers;
    for (const auto& t : terms) pointers.push_back(&t);
    check(host_.get(), t_.loss_backward(trainer_, epoch, index, pointers.data(),
                                        static_cast<uint32_t>(pointers.size()), scale, values));
  }
  double step() {
    double lr = 0;
    check(host_.get(), t_.step(trainer_, &lr));
    return lr;
  }
  void save_state(uint64_t position, bool force) {
    check(host_.get(), t_.save_state(trainer_, position, force ? 1 : 0));
  }
  uint64_t restore_state() {
    uint64_t position = 0;
    check(host_.get(), t_.restore_state(trainer_, &position));
    return position;
  }
  // Revision 2 of the host's table (UNSUPPORTED from an older host).
  // Also the integer codes of `layer`, at peak rate `lr`; false (with the
  // reason) when its format has none to tune.
  bool tune_codes(const char* layer, double lr, std::string* why = nullptr) {
    try {
      check(host_.get(), rev2(&qforge_host_train::tune_layer_codes)(trainer_, layer, lr));
      return true;
    } catch (const Error& e) {
      if (why != nullptr) *why = e.what();
      return false;
    }
  }
  void set_schedule_shape(int32_t shape) {
    check(host_.get(), rev2(&qforge_host_train::set_schedule_shape)(trainer_, shape));
  }
  // Each term's value, without gradients (see qforge_host_train::evaluate).
  std::vector<double> evaluate(const std::vector<qforge_loss_term>& terms) {
    std::vector<const qforge_loss_term*> pointers;
    for (const auto& t : terms) pointers.push_back(&t);
    std::vector<double> values(terms.size(), 0.0);
    check(host_.get(), rev2(&qforge_host_train::evaluate)(
                           trainer_, pointers.data(), static_cast<uint32_t>(pointers.size()),
                           values.data()));
    return values;
  }
  void keep_state() { check(host_.get(), rev2(&qforge_host_train::keep_state)(trainer_)); }
  void revert_state() { check(host_.get(), rev2(&qforge_host_train::revert_state)(trainer_)); }

  // Makes the tunable parameters of packed linear `layer` trainable; false
  // (with the host's message in `why`) when its inference layer has none.
  bool tune(const char* layer, std::string* why = nullptr) {
    try {
      check(host_.get(), t_.tune_layer(trainer_, layer));
      return true;
    } catch (const Error& e) {
      if (why != nullptr) *why = e.what();
      return false;
    }
  }

 private:
  template <class F>
  F rev2(F qforge_host_train::*member) const {
    const size_t end = static_cast<size_t>(reinterpret_cast<const char*>(&(t_.*member)) -
                                           reinterpret_cast<const char*>(&t_)) + sizeof(F);
    if (t_.struct_size < end || t_.*member == nullptr)
      throw Error(QFORGE_STATUS_UNSUPPORTED, "this host's " QFORGE_EXT_HOST_TRAIN " is older than revision 2");
    return t_.*member;
  }
  Host host_;
  const qforge_host_train& t_;
  qforge_trainer* trainer_ = nullptr;
};

// A loss term with the struct size filled in.
inline qforge_loss_term loss_term(int32_t kind, double weight, double temperature = 1.0,
                                  const std::vector<uint32_t>* blocks = nullptr) {
  qforge_loss_term t{};
  t.struct_size = sizeof t;
  t.kind = kind;
  t.weight = weight;
  t.temperature = temperature;
  if (blocks != nullptr && !blocks->empty()) {
    t.blocks = blocks->data();
    t.block_count = static_cast<uint32_t>(blocks->size());
  }
  return t;
}

}  // namespace qforge

#endif  // QFORGE_CPP_TRAIN_HPP
