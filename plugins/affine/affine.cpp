// qforge-affine: one inference layer for every affine grid format,
//   W[o, i] = scale[g, o] · (q[o, i] − zero[g, o]),  g = the group of input i,
// in the table of kernels/include/qforge_kernels/affine_format.hpp (its
// `formats` are the table's ids: org.qforge.rtn/1, org.qforge.gptq/1, ...).
//
// A layer reads its format's tensors through the format's row, repacks them
// once into a PackedMatrix (bits per weight plus the per-group scales and zero
// points, no float32 copy of W) and runs it through torch_layer.hpp: up to
// kGemvMaxRows rows of x the packed SIMD kernels (AVX-512 / AVX2 / portable,
// picked at run time); larger batches and backward_input dequantize W block
// by block into one reused buffer and multiply with a LibTorch GEMM.
// dequantize gives W bit for bit as the format decodes it. Its scales and
// zero points are tunable (qforge.layer.tunable, qforge/ext/train.h). A
// format with transforms (org.qforge.quip/1) runs its grid Q̂ the same way
// between them: y = Uᵀ · (Q̂ · (V · (x ⊘ rescale))), randomized Hadamard
// transforms from qforge_kernels/hadamard.hpp.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/cpp/train.hpp>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/torch_layer.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr const char* kId = "org.qforge.affine.layer";

class AffineLayer : public qforge::kernels::aten::MatrixLayer {
 public:
  static const char* const* formats() { return qforge::kernels::affine_format_ids(); }

  AffineLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
              const std::vector<const qforge_named_tensor*>& tensors) {
    const qforge::kernels::AffineFormat* row = qforge::kernels::find_affine_format(format.c_str());
    row_ = row;
    metadata_ = metadata;
    if (row == nullptr)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                          std::string(kId) + " does not consume format '" + format + "'");
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const qforge_named_tensor* nt : tensors) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        qforge::invalid_argument(format + ": a tensor without name or data");
      if (nt->tensor->device.device_type != kDLCPU)
        throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                            format + " tensor '" + nt->name + "' must be on the CPU");
      named.emplace_back(nt->name, qforge::borrow(*nt->tensor));
    }
    // The tensors are borrowed for this call: the matrix is repacked, the bias copied.
    const qforge::kernels::AffineInput input =
        qforge::kernels::describe_affine(*row, metadata, named);
    in_ = input.weight.shape.in_features;
    out_ = input.weight.shape.out_features;
    if (!input.weight.bias.empty()) bias_ = at::tensor(input.weight.bias, at::kFloat);
    try {
      matrix_ = qforge::kernels::aten::pack(input.weight.weight);
    } catch (const std::invalid_argument& e) {
      qforge::invalid_argument(format + ": " + e.what());
    }
    // The group of every input column (for the gradients of tuning).
    const qforge::kernels::QuantizedWeight& w = input.weight.weight;
    group_of_.resize(static_cast<size_t>(in_));
    for (int64_t i = 0; i < in_; ++i) group_of_[i] = w.g_idx ? w.g_idx[i] : i / w.group_size;
    if (!input.weight.rescale.empty()) rescale_ = at::tensor(input.weight.rescale, at::kFloat);
    input_transform_ = input.weight.input_transform;
    output_transform_ = input.weight.output_transform;
  }

  // ---- formats with transforms: y = Uᵀ · (Q̂ · (V · (x ⊘ rescale))) + bias ----
  bool transformed() const { return rescale_.defined() || input_transform_ || output_transform_; }

  void forward(const DLTensor& xd, const DLTensor& yd) const {
    if (!transformed()) return MatrixLayer::forward(xd, yd);
    const at::Tensor x = qforge::borrow_float_cpu(xd, "forward: x");
    at::Tensor y = qforge::borrow_float_cpu(yd, "forward: y");
    check_rows("forward", x, in_, y, out_);
    at::Tensor h = to_grid_input(x.reshape({-1, in_}));
    at::Tensor z = at::empty({h.size(0), out_}, at::kFloat);
    qforge::kernels::aten::forward(matrix_, h, z, at::Tensor());
    apply(output_transform_, z, /*transpose=*/true);
    if (bias_.defined()) z.add_(bias_);
    y.copy_(z.view(y.sizes()));
  }

  // grad_x = (Vᵀ · (Q̂ᵀ · (U · grad_y))) ⊘ rescale
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    if (!transformed()) return MatrixLayer::backward_input(gyd, gxd);
    const at::Tensor gy = qforge::borrow_float_cpu(gyd, "backward_input: grad_y");
    at::Tensor gx = qforge::borrow_float_cpu(gxd, "backward_input: grad_x");
    check_rows("backward_input", gy, out_, gx, in_);
    const at::Tensor g = from_grid_output(gy.reshape({-1, out_}));
    at::Tensor h = at::empty({g.size(0), in_}, at::kFloat);
    qforge::kernels::aten::backward_input(matrix_, g, h);
    apply(input_transform_, h, /*transpose=*/true);
    if (rescale_.defined()) h.div_(rescale_);
    gx.copy_(h.view(gx.sizes()));
  }

  // W = Uᵀ · Q̂ · V · diag(1 / rescale)
  void dequantize(const DLTensor& wd) const {
    if (!transformed()) return MatrixLayer::dequantize(wd);
    at::Tensor w = qforge::borrow_float_cpu(wd, "dequantize: weight");
    if (w.dim() != 2 || w.size(0) != out_ || w.size(1) != in_)
      qforge::invalid_argument("dequantize: weight must be [" + std::to_string(out_) + ", " +
                               std::to_string(in_) + "], got " + qforge::shape_str(w.sizes()));
    at::Tensor q = at::empty({out_, in_}, at::kFloat);
    qforge::kernels::aten::dequantize_into(matrix_, q);
    apply(input_transform_, q, /*transpose=*/true);             // rows: (Q̂ V)[o] = Vᵀ q_o
    at::Tensor t = q.t().contiguous();
    apply(output_transform_, t, /*transpose=*/true);            // columns: Uᵀ (Q̂ V)[:, i]
    at::Tensor r = t.t();
    if (rescale_.defined()) r = r / rescale_;
    w.copy_(r);
  }

  // ---- qforge.layer.tunable: the scales s and zero points z ----
  //   W[o, i] = s[g, o] · (q[o, i] − z[g, o])  ⇒  with G = ∂L/∂W = grad_yᵀ·x,
  //   ∂L/∂s[g, o] = Σ_{i∈g} G[o, i]·(q[o, i] − z[g, o]),  ∂L/∂z[g, o] = −s[g, o]·Σ_{i∈g} G[o, i].
  // With the codes tuned (revision 3, AutoRound's straight-through offsets
  // v: q = clamp(q₀ + round(v), 0, maxq)),  ∂L/∂v[o, i] = s[g, o]·G[o, i]
  // where the clamp does not hold.
  uint32_t param_count() const { return tuning_ && tuning_->offsets.defined() ? 3 : 2; }

  void param(uint32_t i, const char** name, const DLTensor** value) {
    if (i >= param_count())
      qforge::invalid_argument("the affine layer has " + std::to_string(param_count()) + " tunable params");
    Tuning& t = tuning();
    static const char* const names[] = {"scales", "zeros", "code_offsets"};
    *name = names[i];
    *value = t.views[i]->get();
  }

  void tune_codes() {
    Tuning& t = tuning();
    if (t.offsets.defined()) return;
    at::Tensor q = at::empty({out_, in_}, at::kFloat);
    qforge::kernels::aten::dequantize_into(t.codes, q);  // scales 1, zero points 0: the codes
    t.q0 = q.round().to(at::kByte);
    t.offsets = at::zeros({out_, in_}, at::kFloat);
    t.views[2] = std::make_unique<qforge::DLView>(t.offsets);
  }

  void backward_params(const DLTensor& xd, const DLTensor& gyd, const DLTensor* const* grads) {
    Tuning& t = tuning();
    // With transforms, Q̂ sees V (x ⊘ rescale) and receives U grad_y.
    const at::Tensor x = to_grid_input(qforge::borrow_float_cpu(xd, "backward_params: x").reshape({-1, in_}));
    const at::Tensor gy = from_grid_output(qforge::borrow_float_cpu(gyd, "backward_params: grad_y").reshape({-1, out_}));
    at::Tensor gs = qforge::borrow_float_cpu(*grads[0], "backward_params: grad scales");
    at::Tensor gz = qforge::borrow_float_cpu(*grads[1], "backward_params: grad zeros");
    const at::Tensor G = gy.t().mm(x);  // [out, in]
    at::Tensor q = at::empty({out_, in_}, at::kFloat);
    qforge::kernels::aten::dequantize_into(t.codes, q);  // the codes: scales 1, zero points 0
    const int64_t groups = matrix_.groups();
    const at::Tensor S0 = at::zeros({out_, groups}, at::kFloat).index_add_(1, t.group, G);
    const at::Tensor S1 = at::zeros({out_, groups}, at::kFloat).index_add_(1, t.group, G * q);
    gs.add_((S1 - t.zeros.t() * S0).t());
    gz.sub_((t.scales.t() * S0).t());
    if (t.offsets.defined()) {
      at::Tensor gv = qforge::borrow_float_cpu(*grads[2], "backward_params: grad code_offsets");
      const at::Tensor s = t.scales.t().index_select(1, t.group);  // [out, in]
      const at::Tensor moved = t.q0.to(at::kFloat) + t.offsets.round();
      const at::Tensor free = (moved >= 0).logical_and(moved <= maxq()).to(at::kFloat);
      gv.add_(G * s * free);
    }
  }

  void update() {
    Tuning& t = tuning();
    if (!t.offsets.defined()) {
      matrix_.set_group_params(t.scales.data_ptr<float>(), out_, 1, t.zeros.data_ptr<float>(), out_, 1);
      return;
    }
    t.offsets.clamp_(-1.0, 1.0);
    const at::Tensor q = current_codes(t);
    matrix_ = repack(q, t.scales, t.zeros);
    const at::Tensor one = at::ones({matrix_.groups(), out_}, at::kFloat);
    t.codes = repack(q, one, at::zeros_like(one));
  }

  // Revision 2: the scales and zero points rounded to what the format stores
  // (its row's round_params), the layer switched to them, and the format's
  // tensors with them written in (its row's write_params).
  void store(const std::vector<const qforge_named_tensor*>& original,
             const qforge::QuantizeOutput& out) {
    Tuning& t = tuning();
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const qforge_named_tensor* nt : original) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        qforge::invalid_argument("store: a tensor without name or data");
      named.emplace_back(nt->name, qforge::borrow(*nt->tensor));
    }
    const auto tensors = qforge::kernels::store_group_params(
        *row_, metadata_, named, t.scales, t.zeros,
        t.offsets.defined() ? current_codes(t) : at::Tensor());
    update();
    out.set_format(row_->id, metadata_);
    for (const auto& [name, tensor] : tensors) out.add_tensor(name, tensor);
    at::Tensor w = at::empty({out_, in_}, at::kFloat);
    const qforge::DLView view(w);
    dequantize(*view.get());
    out.set_dequantized(w);
  }

 private:
  struct Tuning {
    at::Tensor scales, zeros;  // [groups, out] float32
    at::Tensor group;          // [in] int64: the group of each input
    qforge::kernels::PackedMatrix codes;  // the same codes with scales 1 and zero points 0
    at::Tensor q0, offsets;    // with tuned codes: the codes at first (uint8), v (float32) [out, in]
    std::unique_ptr<qforge::DLView> views[3];
  };
  int64_t maxq() const { return (int64_t{1} << matrix_.bits()) - 1; }
  // clamp(q₀ + round(v), 0, maxq), uint8 [out, in].
  at::Tensor current_codes(const Tuning& t) const {
    return (t.q0.to(at::kFloat) + t.offsets.round()).clamp_(0, static_cast<double>(maxq())).to(at::kByte);
  }
  // Codes [out, in] with per-group scales and zero points [groups, out] packed
  // as the layer runs them.
  qforge::kernels::PackedMatrix repack(const at::Tensor& codes, const at::Tensor& scales,
                                       const at::Tensor& zeros) const {
    const int bits = matrix_.bits();
    const int64_t words = qforge::kernels::words_for(in_, bits);
    std::vector<uint32_t> packed(static_cast<size_t>(out_ * words));
    const uint8_t* c = codes.data_ptr<uint8_t>();
    for (int64_t o = 0; o < out_; ++o)
      qforge::kernels::pack_bits(c + o * in_, in_, bits, packed.data() + o * words);
    std::vector<int32_t> g_idx(group_of_.begin(), group_of_.end());
    qforge::kernels::QuantizedWeight w;
    w.bits = bits;
    w.in_features = in_;
    w.out_features = out_;
    w.codes = packed.data();
    w.code_word_stride = 1;
    w.code_out_stride = words;
    w.groups = matrix_.groups();
    w.g_idx = g_idx.data();
    w.scales = scales.data_ptr<float>();
    w.scale_group_stride = out_;
    w.scale_out_stride = 1;
    w.zeros = zeros.data_ptr<float>();
    w.zero_group_stride = out_;
    w.zero_out_stride = 1;
    return qforge::kernels::aten::pack(w);
  }
  // Made on first use: inference alone never pays for it.
  Tuning& tuning() {
    if (tuning_) return *tuning_;
    auto t = std::make_unique<Tuning>();
    const int64_t groups = matrix_.groups();
    t->scales = at::empty({groups, out_}, at::kFloat);
    t->zeros = at::empty({groups, out_}, at::kFloat);
    matrix_.group_params(t->scales.data_ptr<float>(), t->zeros.data_ptr<float>());
    t->group = at::tensor(group_of_, at::kLong);
    t->codes = matrix_;
    const at::Tensor one = at::ones({groups, out_}, at::kFloat), zero = at::zeros({groups, out_}, at::kFloat);
    t->codes.set_group_params(one.data_ptr<float>(), out_, 1, zero.data_ptr<float>(), out_, 1);
    t->views[0] = std::make_unique<qforge::DLView>(t->scales);
    t->views[1] = std::make_unique<qforge::DLView>(t->zeros);
    tuning_ = std::move(t);
    return *tuning_;
  }
  // V (x ⊘ rescale): what Q̂ multiplies (x itself without transforms).
  at::Tensor to_grid_input(const at::Tensor& x2) const {
    if (!transformed()) return x2;
    at::Tensor h = rescale_.defined() ? x2 / rescale_ : x2.contiguous().clone();
    apply(input_transform_, h, /*transpose=*/false);
    return h;
  }
  // U grad_y: the gradient with respect to Q̂'s output.
  at::Tensor from_grid_output(const at::Tensor& gy2) const {
    if (!transformed()) return gy2;
    at::Tensor g = gy2.contiguous().clone();
    apply(output_transform_, g, /*transpose=*/false);
    return g;
  }
  // Each row of the contiguous [rows, n] m ← T m (or Tᵀ m), rows in parallel.
  static void apply(const std::shared_ptr<const qforge::kernels::RandomizedHadamard>& t, at::Tensor& m,
                    bool transpose) {
    if (!t) return;
    float* p = m.data_ptr<float>();
    const int64_t n = m.size(1);
    at::parallel_for(0, m.size(0), 16, [&](int64_t a, int64_t b) {
      t->apply(p + a * n, b - a, n, transpose);
    });
  }
  static void check_rows(const char* fn, const at::Tensor& a, int64_t a_last, const at::Tensor& b,
                         int64_t b_last) {
    bool ok = a.dim() >= 1 && b.dim() == a.dim() && a.size(-1) == a_last && b.size(-1) == b_last;
    for (int64_t k = 0; ok && k + 1 < a.dim(); ++k) ok = a.size(k) == b.size(k);
    if (!ok)
      qforge::invalid_argument(std::string(fn) + ": shapes " + qforge::shape_str(a.sizes()) + " and " +
                               qforge::shape_str(b.sizes()) + " do not match the layer");
  }

  const qforge::kernels::AffineFormat* row_ = nullptr;
  std::string metadata_;
  at::Tensor rescale_;
  std::shared_ptr<const qforge::kernels::RandomizedHadamard> input_transform_, output_transform_;
  std::vector<int64_t> group_of_;
  std::unique_ptr<Tuning> tuning_;
};

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const features[] = {"cpu", "packed-kernels", nullptr};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_INFERENCE_LAYER, kId, "Affine packed layer", "1.0.0", "qforge", "MIT",
        "Runs every affine grid format (W = s·(q − z) with per-group scales and zero points "
        "and any g_idx: org.qforge.rtn/1, org.qforge.gptq/1) on the CPU from its bit-packed "
        "codes: packed AVX-512/AVX2 kernels for small batches, dequantize + LibTorch GEMM for "
        "large ones.",
        features, nullptr, 0, qforge::inference_layer_vtable<AffineLayer>()));
    l.back().get_extension = &qforge::tunable_extension<AffineLayer>;
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-affine", "1.0.0", components)
