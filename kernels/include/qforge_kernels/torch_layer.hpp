// The DLPack face of an inference layer that runs a PackedMatrix: the checks
// of the tensors the host passes and the calls into torch_matmul.hpp.
// Header-only; for plugin code, which has the SDK's C++ helpers and ATen.
#pragma once

#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/torch_matmul.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace qforge::kernels::aten {

// y = x Wᵀ + bias with W held as a PackedMatrix. A subclass sets in_, out_,
// matrix_ and bias_ (float32 [out] or undefined) from what it was created from.
class MatrixLayer {
 public:
  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }

  // y = x Wᵀ + bias
  void forward(const DLTensor& xd, const DLTensor& yd) const {
    const at::Tensor x = qforge::borrow_float_cpu(xd, "forward: x");
    const at::Tensor y = qforge::borrow_float_cpu(yd, "forward: y");
    check_pair("forward", x, "x", in_, y, "y", out_);
    linear_forward(matrix_, x, y, bias_);
  }

  // grad_x = grad_y W
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    const at::Tensor gy = qforge::borrow_float_cpu(gyd, "backward_input: grad_y");
    const at::Tensor gx = qforge::borrow_float_cpu(gxd, "backward_input: grad_x");
    check_pair("backward_input", gy, "grad_y", out_, gx, "grad_x", in_);
    linear_backward_input(matrix_, gy, gx);
  }

  void dequantize(const DLTensor& wd) const {
    const at::Tensor w = qforge::borrow_float_cpu(wd, "dequantize: weight");
    if (w.dim() != 2 || w.size(0) != out_ || w.size(1) != in_)
      qforge::invalid_argument("dequantize: weight must be [" + std::to_string(out_) + ", " +
                               std::to_string(in_) + "], got " + qforge::shape_str(w.sizes()));
    dequantize_into(matrix_, w);
  }

 protected:
  int64_t in_ = 0, out_ = 0;
  PackedMatrix matrix_;
  at::Tensor bias_;

 private:
  // a [..., a_last] and b [..., b_last] with the same leading dims.
  static void check_pair(const char* fn, const at::Tensor& a, const char* an, int64_t a_last,
                         const at::Tensor& b, const char* bn, int64_t b_last) {
    bool ok = a.dim() >= 1 && b.dim() == a.dim() && a.size(-1) == a_last && b.size(-1) == b_last;
    for (int64_t k = 0; ok && k + 1 < a.dim(); ++k) ok = a.size(k) == b.size(k);
    if (!ok)
      qforge::invalid_argument(
          std::string(fn) + ": expected " + an + " [..., " + std::to_string(a_last) + "] and " +
          bn + " [..., " + std::to_string(b_last) + "] with the same leading dimensions, got " +
          qforge::shape_str(a.sizes()) + " and " + qforge::shape_str(b.sizes()));
  }
};

}  // namespace qforge::kernels::aten
