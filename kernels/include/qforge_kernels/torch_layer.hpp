// The DLPack face of an inference layer that runs a PackedMatrix: the checks
// of the tensors the host passes and the calls into torch_matmul.hpp, shared
// by the in-tree layers (RTN, GPTQ). Header-only; for plugin code, which has
// the SDK's C++ helpers and ATen.
#pragma once

#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

namespace qforge::kernels::aten {

[[noreturn]] inline void invalid(const std::string& message) {
  throw qforge::Error(QFORGE_STATUS_INVALID_ARGUMENT, message);
}

inline std::string shape_str(at::IntArrayRef s) {
  std::string text = "[";
  for (size_t k = 0; k < s.size(); ++k) text += (k ? ", " : "") + std::to_string(s[k]);
  return text + "]";
}

// The ABI fixes float32 for the tensors these components take; another
// device is a valid request a CPU-only plugin can't serve.
inline void require_float_cpu(const at::Tensor& t, const std::string& what) {
  if (!t.device().is_cpu())
    throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, what + " must be on the CPU");
  if (t.scalar_type() != at::kFloat)
    invalid(what + " must be float32, got " + at::toString(t.scalar_type()));
}

// Reads integer `key` of a format's (untrusted) metadata object, in [lo, hi].
inline int64_t meta_int(const nlohmann::json& m, const std::string& format, const char* key,
                        int64_t lo, int64_t hi) {
  const auto it = m.find(key);
  if (it == m.end()) invalid(format + " metadata lacks \"" + key + "\"");
  if (!it->is_number_integer()) invalid(format + " metadata \"" + key + "\" must be an integer");
  const bool too_big = it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(hi);
  const int64_t v = too_big ? hi + 1 : it->get<int64_t>();
  if (v < lo || v > hi)
    invalid(format + " metadata \"" + key + "\" must be in [" + std::to_string(lo) + ", " +
            std::to_string(hi) + "], got " + it->dump());
  return v;
}

// The (untrusted) named tensors handed to an inference layer's create: each
// name at most once and one the format knows.
class PackedTensors {
 public:
  PackedTensors(std::string format, const std::vector<const qforge_named_tensor*>& tensors,
                std::initializer_list<const char*> known)
      : format_(std::move(format)) {
    for (const qforge_named_tensor* nt : tensors) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        invalid(format_ + ": a tensor without name or data");
      const std::string name = nt->name;
      bool ok = false;
      for (const char* k : known) ok = ok || name == k;
      if (!ok) invalid(format_ + ": unexpected tensor '" + name + "'");
      if (!by_name_.emplace(name, nt->tensor).second)
        invalid(format_ + ": tensor '" + name + "' given twice");
    }
  }

  // Tensor `name` on the CPU, of one of `dtypes` and exactly `shape`: a
  // contiguous view (or copy) valid while create's arguments are; undefined
  // when absent and not `required`.
  at::Tensor take(const std::string& name, std::initializer_list<DLDataType> dtypes,
                  const std::vector<int64_t>& shape, bool required) const {
    const auto it = by_name_.find(name);
    if (it == by_name_.end()) {
      if (required) invalid(format_ + ": tensor '" + name + "' is missing");
      return at::Tensor();
    }
    const DLTensor& t = *it->second;
    const std::string what = format_ + " tensor '" + name + "'";
    if (t.device.device_type != kDLCPU)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, what + " must be on the CPU");
    bool dtype_ok = false;
    for (const DLDataType& d : dtypes)
      dtype_ok = dtype_ok ||
                 (t.dtype.code == d.code && t.dtype.bits == d.bits && t.dtype.lanes == d.lanes);
    if (!dtype_ok)
      invalid(what + " has the wrong dtype (DLPack code " + std::to_string(t.dtype.code) +
              ", bits " + std::to_string(t.dtype.bits) + ", lanes " +
              std::to_string(t.dtype.lanes) + ")");
    bool same = t.ndim == static_cast<int32_t>(shape.size()) && t.shape != nullptr;
    for (size_t k = 0; same && k < shape.size(); ++k) same = t.shape[k] == shape[k];
    if (!same) {
      std::vector<int64_t> got;
      if (t.shape != nullptr && t.ndim >= 0 && t.ndim <= 16) got.assign(t.shape, t.shape + t.ndim);
      invalid(what + " must have shape " + shape_str(shape) + " for the metadata, got " +
              (t.shape != nullptr ? shape_str(got) : std::string("no shape")));
    }
    if (t.data == nullptr) invalid(what + " has no data");
    return qforge::borrow(t).contiguous();
  }

 private:
  std::string format_;
  std::map<std::string, const DLTensor*> by_name_;
};

// y = x Wᵀ + bias with W held as a PackedMatrix. A subclass per packed format
// reads its tensors and sets in_, out_, matrix_ and bias_ (float32 or undefined).
class MatrixLayer {
 public:
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }

  // y = x Wᵀ + bias
  void forward(const DLTensor& xd, const DLTensor& yd) const {
    const at::Tensor x = qforge::borrow(xd);
    const at::Tensor y = qforge::borrow(yd);
    check_pair("forward", x, "x", in_, y, "y", out_);
    linear_forward(matrix_, x, y, bias_);
  }

  // grad_x = grad_y W
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    const at::Tensor gy = qforge::borrow(gyd);
    const at::Tensor gx = qforge::borrow(gxd);
    check_pair("backward_input", gy, "grad_y", out_, gx, "grad_x", in_);
    linear_backward_input(matrix_, gy, gx);
  }

  void dequantize(const DLTensor& wd) const {
    const at::Tensor w = qforge::borrow(wd);
    require_float_cpu(w, "dequantize: weight");
    if (w.dim() != 2 || w.size(0) != out_ || w.size(1) != in_)
      invalid("dequantize: weight must be [" + std::to_string(out_) + ", " +
              std::to_string(in_) + "], got " + shape_str(w.sizes()));
    dequantize_into(matrix_, w);
  }

 protected:
  int64_t in_ = 0, out_ = 0;
  PackedMatrix matrix_;
  at::Tensor bias_;

 private:
  // a [..., a_last] and b [..., b_last], float32 on the CPU, same leading dims.
  static void check_pair(const char* fn, const at::Tensor& a, const char* an, int64_t a_last,
                         const at::Tensor& b, const char* bn, int64_t b_last) {
    require_float_cpu(a, std::string(fn) + ": " + an);
    require_float_cpu(b, std::string(fn) + ": " + bn);
    bool ok = a.dim() >= 1 && b.dim() == a.dim() && a.size(-1) == a_last && b.size(-1) == b_last;
    for (int64_t k = 0; ok && k + 1 < a.dim(); ++k) ok = a.size(k) == b.size(k);
    if (!ok)
      invalid(std::string(fn) + ": expected " + an + " [..., " + std::to_string(a_last) +
              "] and " + bn + " [..., " + std::to_string(b_last) + "] with the same leading " +
              "dimensions, got " + shape_str(a.sizes()) + " and " + shape_str(b.sizes()));
  }
};

}  // namespace qforge::kernels::aten
