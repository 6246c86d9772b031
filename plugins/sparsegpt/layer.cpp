// org.qforge.pruned.layer: runs org.qforge.pruned/1
// (qforge/formats/pruned_v1.h), a pruned float32 weight, as y = x Wᵀ + bias.
// The file is checked as untrusted: metadata, dtypes, shapes, finite values,
// the zero fraction it claims, and the N:M pattern it claims (a weight that
// breaks it is refused, since an N:M kernel would silently drop weights).
//
// 2:4 weights run compressed on the 2:4 kernel (Multiply below); other
// structures run dense (at::linear).
#include <qforge/cpp/metadata.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/pruned_v1.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <qforge_kernels/sparse24.hpp>

#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "sparsegpt.hpp"

namespace qforge::sparsegpt {

std::string Structure::text() const {
  return unstructured() ? QFORGE_SPARSITY_UNSTRUCTURED
                        : std::to_string(n) + ":" + std::to_string(m);
}

Structure parse_structure(const std::string& text, const std::string& what) {
  if (text == QFORGE_SPARSITY_UNSTRUCTURED) return Structure{};
  int n = 0, m = 0, used = 0;
  if (std::sscanf(text.c_str(), "%d:%d%n", &n, &m, &used) == 2 &&
      used == static_cast<int>(text.size()) && text.find_first_of(" +-") == std::string::npos &&
      0 < n && n < m && m <= 64)
    return Structure{n, m};
  invalid_argument(what + " must be \"N:M\" with 0 < N < M <= 64 (e.g. \"2:4\") or \"" +
                   QFORGE_SPARSITY_UNSTRUCTURED + "\", got \"" + text + "\"");
}

std::string n_of_m_violation(const at::Tensor& w, const Structure& s) {
  if (s.unstructured()) return "";
  const int64_t out = w.size(0), in = w.size(1);
  const float* p = w.data_ptr<float>();
  for (int64_t r = 0; r < out; ++r)
    for (int64_t j = 0; j < in; j += s.m) {
      int zeros = 0;
      for (int64_t k = j; k < j + s.m; ++k) zeros += p[r * in + k] == 0.f;
      if (zeros < s.n)
        return "row " + std::to_string(r) + ", inputs [" + std::to_string(j) + ", " +
               std::to_string(j + s.m) + ") hold " + std::to_string(zeros) + " zero" +
               (zeros == 1 ? "" : "s");
    }
  return "";
}

namespace {

// The layer's description, from its metadata (checked).
struct Description {
  int64_t in = 0, out = 0;
  Structure structure;
  double sparsity = 0;
};

Description describe(const std::string& text) {
  const Metadata m = Metadata::parse(text);
  Description d;
  d.in = m.get_int(QFORGE_PRUNED_V1_IN_FEATURES);
  d.out = m.get_int(QFORGE_PRUNED_V1_OUT_FEATURES);
  if (d.in < 1 || d.out < 1) invalid_argument("metadata: in_features and out_features must be >= 1");
  d.structure = parse_structure(m.get_string(QFORGE_META_SPARSITY_STRUCTURE),
                                "metadata: " QFORGE_META_SPARSITY_STRUCTURE);
  d.sparsity = m.get_float(QFORGE_PRUNED_V1_SPARSITY);
  if (!(d.sparsity >= 0 && d.sparsity <= 1))
    invalid_argument("metadata: sparsity must be in [0, 1]");
  if (!d.structure.unstructured() && d.in % d.structure.m != 0)
    invalid_argument("metadata: in_features " + std::to_string(d.in) + " is not a multiple of M in " +
                     d.structure.text());
  return d;
}

// The weight, checked against the description: dtype, shape, finite, the
// zero fraction and the N:M pattern it claims.
at::Tensor checked_weight(const at::Tensor& t, const Description& d) {
  if (t.scalar_type() != at::kFloat || t.dim() != 2 || t.size(0) != d.out || t.size(1) != d.in)
    invalid_argument("weight must be float32 [" + std::to_string(d.out) + ", " +
                     std::to_string(d.in) + "], got " + std::string(c10::toString(t.scalar_type())) +
                     " " + shape_str(t.sizes()));
  at::Tensor w = t.contiguous().clone();
  if (!at::isfinite(w).all().item<bool>()) invalid_argument("weight has NaN or infinite values");
  const double zeros = static_cast<double>(w.eq(0).sum().item<int64_t>()) / static_cast<double>(w.numel());
  if (std::fabs(zeros - d.sparsity) > 1e-6)
    invalid_argument("metadata claims sparsity " + std::to_string(d.sparsity) +
                     ", but the weight's zero fraction is " + std::to_string(zeros));
  if (const std::string why = n_of_m_violation(w, d.structure); !why.empty())
    invalid_argument("metadata claims " + d.structure.text() + " sparsity, but the weight breaks it: " +
                     why);
  return w;
}

// y = x Wᵀ + bias. Weights with at least 2 zeros in every 4 inputs (2:4)
// are kept compressed (kernels/sparse24.hpp: the 2 kept values of every 4
// and their 2-bit positions, 2.125 bytes per weight instead of 4) and run on
// the 2:4 kernel up to sparse_rows() rows (the README's measurements: 1.5–2.4×
// LibTorch's dense float32 at batch 1 with AVX-512, 1.1–1.8× with AVX2; at
// 128 rows still ahead with AVX-512, behind with AVX2); above, the weight is
// unpacked for the call and the product is dense. Other structures run dense.
class Multiply {
 public:
  Multiply(at::Tensor weight, at::Tensor bias, const Structure& s) : bias_(std::move(bias)) {
    if (s.m == 4 && s.n >= 2)
      packed_ = std::make_shared<const kernels::sparse24::Packed>(kernels::sparse24::pack(
          weight.data_ptr<float>(), weight.size(0), weight.size(1)));
    else
      weight_ = std::move(weight);
  }

  at::Tensor operator()(const at::Tensor& x) const {
    const int64_t rows = x.size(0);
    if (!packed_ || rows > sparse_rows()) return at::linear(x, weight(), bias_);
    const at::Tensor xc = x.contiguous();
    at::Tensor y = at::empty({rows, packed_->out}, at::kFloat);
    kernels::sparse24::matmul(
        *packed_, xc.data_ptr<float>(), rows, y.data_ptr<float>(),
        bias_.defined() ? bias_.data_ptr<float>() : nullptr,
        [](int64_t b, int64_t e, int64_t grain, const auto& f) { at::parallel_for(b, e, grain, f); });
    return y;
  }

  // The dense weight (unpacked exactly when compressed).
  at::Tensor weight() const {
    if (!packed_) return weight_;
    at::Tensor w = at::empty({packed_->out, packed_->in}, at::kFloat);
    kernels::sparse24::unpack(*packed_, w.data_ptr<float>());
    return w;
  }

 private:
  static int64_t sparse_rows() {
    return kernels::active_isa() == kernels::Isa::kAvx512 ? 128 : 16;
  }

  at::Tensor weight_, bias_;
  std::shared_ptr<const kernels::sparse24::Packed> packed_;
};

class PrunedLayer {
 public:
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_PRUNED_V1, nullptr};
    return list;
  }

  PrunedLayer(const Host&, const std::string&, const std::string& metadata,
              const std::vector<const qforge_named_tensor*>& tensors)
      : d_(describe(metadata)),
        multiply_(checked_weight(tensor_named(tensors, QFORGE_PRUNED_V1_WEIGHT), d_),
                  bias_of(tensors, d_), d_.structure) {}

  int64_t out_features() const { return d_.out; }
  int64_t in_features() const { return d_.in; }

  void forward(const DLTensor& x, const DLTensor& y) const {
    const at::Tensor in = borrow(x).reshape({-1, d_.in}).to(at::kFloat);
    borrow(y).view({-1, d_.out}).copy_(multiply_(in));
  }
  void backward_input(const DLTensor& grad_y, const DLTensor& grad_x) const {
    const at::Tensor gy = borrow(grad_y).reshape({-1, d_.out}).to(at::kFloat);
    borrow(grad_x).view({-1, d_.in}).copy_(gy.mm(multiply_.weight()));
  }
  void dequantize(const DLTensor& out) const { borrow(out).copy_(multiply_.weight()); }

 private:
  static at::Tensor bias_of(const std::vector<const qforge_named_tensor*>& tensors,
                            const Description& d) {
    const at::Tensor b = tensor_named(tensors, QFORGE_PRUNED_V1_BIAS, false);
    if (!b.defined()) return b;
    if (b.scalar_type() != at::kFloat || b.dim() != 1 || b.size(0) != d.out)
      invalid_argument("bias must be float32 [" + std::to_string(d.out) + "]");
    if (!at::isfinite(b).all().item<bool>()) invalid_argument("bias has NaN or infinite values");
    return b.contiguous().clone();
  }

  Description d_;
  Multiply multiply_;
};

}  // namespace

void describe_layer(Plugin& plugin) {
  plugin.inference_layer<PrunedLayer>(
      {"org.qforge.pruned.layer", "Pruned float layer", "1.0.0", "qforge", "MIT",
       "Runs org.qforge.pruned/1 (a float32 weight with its pruned entries exactly 0) as a "
       "dense float32 product, after checking the file: shapes, dtypes, finite values, the "
       "zero fraction and the N:M pattern its metadata claims."});
}

}  // namespace qforge::sparsegpt
