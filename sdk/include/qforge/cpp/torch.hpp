// Optional header-only bridge between DLPack tensors and at::Tensor, without
// copying. Include it only in translation units that already use ATen; it
// needs <ATen/ATen.h> and never includes ATen's own dlpack.h.
//
//   at::Tensor qforge::borrow(const DLTensor&)      view, valid while the DLTensor is
//   at::Tensor qforge::borrow_float_cpu(t, what)    the same, checked float32 on the CPU
//   at::Tensor qforge::adopt(DLManagedTensor*)      takes ownership (deleter called once)
//   DLManagedTensor* qforge::export_tensor(at::Tensor)  gives ownership away
//
// With it, QuantizeOutput's add_tensor / set_dequantized take at::Tensor, and
// two helpers serve inference layers:
//   at::Tensor qforge::tensor_named(tensors, "codes")   a packed tensor by name
//   struct qforge::DenseLayer                            an inference layer that
//       runs as a float32 matrix unpacked once at load (forward, backward_input,
//       dequantize done; derive and set `weight`, and `bias` when there is one)
#ifndef QFORGE_CPP_TORCH_HPP
#define QFORGE_CPP_TORCH_HPP

#include <ATen/ATen.h>
#include <qforge/cpp/plugin.hpp>

#include <string>
#include <vector>

namespace qforge {

inline at::ScalarType scalar_type(DLDataType t) {
  if (t.lanes == 1) {
    switch (t.code) {
      case kDLFloat:
        if (t.bits == 32) return at::kFloat;
        if (t.bits == 16) return at::kHalf;
        if (t.bits == 64) return at::kDouble;
        break;
      case kDLBfloat:
        if (t.bits == 16) return at::kBFloat16;
        break;
      case kDLInt:
        if (t.bits == 8) return at::kChar;
        if (t.bits == 16) return at::kShort;
        if (t.bits == 32) return at::kInt;
        if (t.bits == 64) return at::kLong;
        break;
      case kDLUInt:
        if (t.bits == 8) return at::kByte;
        break;
      default:
        break;
    }
  }
  throw Error(QFORGE_STATUS_UNSUPPORTED,
              "unsupported DLPack dtype (code " + std::to_string(t.code) + ", bits " +
                  std::to_string(t.bits) + ", lanes " + std::to_string(t.lanes) + ")");
}

inline DLDataType dl_dtype(at::ScalarType s) {
  switch (s) {
    case at::kFloat: return DLDataType{kDLFloat, 32, 1};
    case at::kHalf: return DLDataType{kDLFloat, 16, 1};
    case at::kDouble: return DLDataType{kDLFloat, 64, 1};
    case at::kBFloat16: return DLDataType{kDLBfloat, 16, 1};
    case at::kChar: return DLDataType{kDLInt, 8, 1};
    case at::kShort: return DLDataType{kDLInt, 16, 1};
    case at::kInt: return DLDataType{kDLInt, 32, 1};
    case at::kLong: return DLDataType{kDLInt, 64, 1};
    case at::kByte: return DLDataType{kDLUInt, 8, 1};
    default:
      throw Error(QFORGE_STATUS_UNSUPPORTED,
                  std::string("dtype not expressible in DLPack: ") + at::toString(s));
  }
}

inline at::Device device_of(const DLDevice& d) {
  if (d.device_type == kDLCPU) return at::Device(at::kCPU);
  if (d.device_type == kDLCUDA) return at::Device(at::kCUDA, static_cast<int16_t>(d.device_id));
  throw Error(QFORGE_STATUS_UNSUPPORTED,
              "unsupported DLPack device type " + std::to_string(d.device_type));
}

// A view of `t` (no copy). NULL data is allowed only for empty tensors.
inline at::Tensor borrow(const DLTensor& t) {
  if (t.ndim < 0 || t.ndim > 16) invalid_argument("DLTensor has an invalid ndim");
  if (t.shape == nullptr && t.ndim > 0) invalid_argument("DLTensor without shape");
  std::vector<int64_t> sizes(t.shape, t.shape + t.ndim);
  int64_t numel = 1;
  for (int64_t d : sizes) {
    if (d < 0) invalid_argument("DLTensor has a negative dimension");
    numel *= d;
  }
  if (t.data == nullptr && numel > 0) invalid_argument("DLTensor has NULL data");
  std::vector<int64_t> strides;
  if (t.strides != nullptr) {
    strides.assign(t.strides, t.strides + t.ndim);
    for (int64_t s : strides)
      if (s < 0) throw Error(QFORGE_STATUS_UNSUPPORTED, "DLTensor has a negative stride");
  } else {  // compact row-major, as DLPack defines a NULL strides
    strides.assign(t.ndim, 1);
    for (int k = t.ndim - 2; k >= 0; --k) strides[k] = strides[k + 1] * sizes[k + 1];
  }
  auto opts = at::TensorOptions().dtype(scalar_type(t.dtype)).device(device_of(t.device));
  char* base = static_cast<char*>(t.data) + t.byte_offset;
  return at::from_blob(base, sizes, strides, opts);
}

// A view of `t` after checking that it is float32 on the CPU (require_cpu_dtype).
inline at::Tensor borrow_float_cpu(const DLTensor& t, const std::string& what) {
  require_cpu_dtype(t, DLDataType{kDLFloat, 32, 1}, what);
  return borrow(t);
}

// Takes ownership of `m`: the returned tensor calls m->deleter when freed.
inline at::Tensor adopt(DLManagedTensor* m) {
  if (m == nullptr) invalid_argument("NULL DLManagedTensor");
  at::Tensor view;
  try {
    view = borrow(m->dl_tensor);
  } catch (...) {
    if (m->deleter) m->deleter(m);
    throw;
  }
  auto deleter = [m](void*) {
    if (m->deleter) m->deleter(m);
  };
  return at::from_blob(view.data_ptr(), view.sizes(), view.strides(), deleter, view.options());
}

// Gives a reference to `t` away as a DLManagedTensor; the receiver calls its
// deleter once. Strides are filled and byte_offset is 0.
inline DLManagedTensor* export_tensor(const at::Tensor& t) {
  struct Holder {
    at::Tensor tensor;
    std::vector<int64_t> shape, strides;
    DLManagedTensor managed;
  };
  auto* h = new Holder{t, t.sizes().vec(), t.strides().vec(), {}};
  DLManagedTensor& m = h->managed;
  m.dl_tensor.data = t.data_ptr();
  m.dl_tensor.device.device_type = t.is_cuda() ? kDLCUDA : kDLCPU;
  m.dl_tensor.device.device_id = t.is_cuda() ? t.device().index() : 0;
  m.dl_tensor.ndim = static_cast<int32_t>(t.dim());
  try {
    m.dl_tensor.dtype = dl_dtype(t.scalar_type());
  } catch (...) {
    delete h;
    throw;
  }
  m.dl_tensor.shape = h->shape.data();
  m.dl_tensor.strides = h->strides.data();
  m.dl_tensor.byte_offset = 0;
  m.manager_ctx = h;
  m.deleter = [](DLManagedTensor* self) { delete static_cast<Holder*>(self->manager_ctx); };
  return &m;
}

template <>
struct TensorExport<at::Tensor> {
  static DLManagedTensor* make(const at::Tensor& t) { return export_tensor(t); }
};

// The packed tensor `name` an inference layer was created with (a borrowed
// view, valid during `create`: copy what the layer keeps); when it is missing,
// INVALID_ARGUMENT, or an undefined tensor if it is not `required`.
inline at::Tensor tensor_named(const std::vector<const qforge_named_tensor*>& tensors,
                               const char* name, bool required = true) {
  for (const auto* t : tensors)
    if (t != nullptr && t->name != nullptr && std::string(t->name) == name && t->tensor != nullptr)
      return borrow(*t->tensor);
  if (required) invalid_argument(std::string("the packed tensors have no '") + name + "'");
  return at::Tensor();
}

// An inference layer computing with a dense float32 weight [out, in] (and an
// optional bias [out]) that the derived constructor unpacks once: y = x Wᵀ + b.
// Simple and exact; a packed kernel is faster and smaller.
struct DenseLayer {
  at::Tensor weight, bias;
  int64_t out_features() const { return weight.size(0); }
  int64_t in_features() const { return weight.size(1); }
  void forward(const DLTensor& x, const DLTensor& y) const {
    at::Tensor out = borrow(y).view({-1, out_features()});
    at::Tensor in = borrow(x).reshape({-1, in_features()}).to(at::kFloat);
    if (bias.defined()) at::addmm_out(out, bias, in, weight.t());
    else at::mm_out(out, in, weight.t());
  }
  void backward_input(const DLTensor& grad_y, const DLTensor& grad_x) const {
    at::Tensor gx = borrow(grad_x).view({-1, in_features()});
    at::mm_out(gx, borrow(grad_y).reshape({-1, out_features()}).to(at::kFloat), weight);
  }
  void dequantize(const DLTensor& out) const { borrow(out).copy_(weight); }
};

// A borrowed DLTensor describing `t` (t must outlive the use). Storage for
// shape/strides lives in the returned object.
class DLView {
 public:
  explicit DLView(const at::Tensor& t)
      : tensor_(t), shape_(t.sizes().vec()), strides_(t.strides().vec()) {
    dl_.data = t.data_ptr();
    dl_.device.device_type = t.is_cuda() ? kDLCUDA : kDLCPU;
    dl_.device.device_id = t.is_cuda() ? t.device().index() : 0;
    dl_.ndim = static_cast<int32_t>(t.dim());
    dl_.dtype = dl_dtype(t.scalar_type());
    dl_.shape = shape_.data();
    dl_.strides = strides_.data();
    dl_.byte_offset = 0;
  }
  DLView(const DLView&) = delete;
  DLView& operator=(const DLView&) = delete;
  const DLTensor* get() const { return &dl_; }

 private:
  at::Tensor tensor_;
  std::vector<int64_t> shape_, strides_;
  DLTensor dl_{};
};

}  // namespace qforge

#endif  // QFORGE_CPP_TORCH_HPP
