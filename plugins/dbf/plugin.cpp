// qforge-dbf: the quantizer org.qforge.dbf (dbf.cpp behind the plugin ABI),
// writing the packed format org.qforge.dbf/1 (qforge/formats/dbf_v1.h), and
// org.qforge.dbf.layer, which runs it with the sign kernels
// (qforge_kernels/sign_chain.hpp), y = s4 ⊙ (S_A·(s2 ⊙ (S_B·(s0 ⊙ x)))).
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/metadata.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/cpp/train.hpp>
#include <qforge/formats/dbf_v1.h>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/sign_format.hpp>
#include <qforge_kernels/torch_sign.hpp>

#include <ATen/ATen.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "dbf.hpp"

namespace {

namespace dbf = qforge::dbf;
namespace qk = qforge::kernels;

// Rows of ±1 as bits, MSB first, 1 = +1; the tail of a row's last byte is 1.
at::Tensor pack_signs(const at::Tensor& s) {
  const int64_t rows = s.size(0), cols = s.size(1), bytes = (cols + 7) / 8;
  at::Tensor out = at::full({rows, bytes}, 0xFF, at::kByte);
  const at::Tensor c = s.contiguous();
  const float* src = c.data_ptr<float>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      if (src[r * cols + j] < 0) dst[r * bytes + j / 8] &= static_cast<uint8_t>(~(0x80u >> (j % 8)));
  return out;
}

dbf::Settings settings(const qforge::Params& p, const qforge::LayerInput& in,
                       const std::string& layer) {
  dbf::Settings s;
  double bits = p.get_float("target_bits");
  const double mlp_bits = p.get_float("mlp_target_bits");
  if (mlp_bits > 0 && layer.find("mlp") != std::string::npos) bits = mlp_bits;
  s.k = dbf::middle_dimension(bits, in.out_features(), in.in_features());
  const std::string mode = p.get_enum("mode");
  s.data_aware = mode == "data-aware";
  if (s.data_aware && !in.hessian.defined())
    qforge::invalid_argument("mode data-aware needs the layer's Hessian (calibration data)");
  s.balance = p.get_bool("use_balancing");
  s.balance_iters = p.get_int("balance_iters");
  s.balance_alpha = p.get_float("balance_alpha");
  s.balance_l2 = p.get_enum("balance_mode") == "l2";
  s.adaptive_rho = p.get_bool("use_adaptive_rho");
  s.reg = p.get_float("reg");
  s.seed = static_cast<uint64_t>(p.get_int("seed"));
  // OneComp: 600 fixed iterations from a random start; data-aware: from the
  // SVD, at most as many, until the relative error changes less than `tol`
  // in 10 (1e-4 stopped too early on stories260K: 63.1 instead of 45.6 at
  // 2 bits; at 1e-5 every stories260K layer ran all 600 at 2 bits).
  s.iters = p.get_int("iters");
  s.tol = s.data_aware ? p.get_float("tol") : 0.0;
  s.svd_init = s.data_aware;
  s.column_weights = p.get_bool("column_weights");
  s.scale_rounds = static_cast<int>(p.get_int("scale_rounds"));
  return s;
}

struct DbfQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_DBF_V1, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    const std::string layer = input.layer_name ? input.layer_name : "";
    const dbf::Settings s = settings(params, in, layer);
    const auto t0 = std::chrono::steady_clock::now();
    dbf::Factors f;
    try {
      f = dbf::factorize(in.weight, in.hessian, s);
    } catch (const std::runtime_error& e) {
      throw qforge::Error(QFORGE_STATUS_INTERNAL, layer + ": " + e.what());
    }
    const int64_t n = in.out_features(), m = in.in_features();
    out.set_format(QFORGE_FORMAT_DBF_V1,
                   qforge::Metadata{{QFORGE_DBF_V1_OUT_FEATURES, n},
                                    {QFORGE_DBF_V1_IN_FEATURES, m},
                                    {QFORGE_DBF_V1_K, s.k}}
                       .dump());
    out.add_tensor(QFORGE_DBF_V1_SIGN_A, qforge::export_tensor(pack_signs(f.sign_a)));
    out.add_tensor(QFORGE_DBF_V1_SIGN_B, qforge::export_tensor(pack_signs(f.sign_b)));
    out.add_tensor(QFORGE_DBF_V1_S4, qforge::export_tensor(f.s4.to(at::kHalf)));
    out.add_tensor(QFORGE_DBF_V1_S2, qforge::export_tensor(f.s2.to(at::kHalf)));
    out.add_tensor(QFORGE_DBF_V1_S0, qforge::export_tensor(f.s0.to(at::kHalf)));
    if (in.bias.defined()) out.add_tensor(QFORGE_DBF_V1_BIAS, qforge::export_tensor(in.bias));
    out.set_dequantized(qforge::export_tensor(dbf::reconstruct(f)));
    out.set_metric("k", static_cast<double>(s.k));
    out.set_metric("effective_bits", dbf::effective_bits(s.k, n, m));
    out.set_metric("weights", static_cast<double>(n * m));
    out.set_metric("iterations", static_cast<double>(f.iterations));
    out.set_metric("factor_relative_error", f.relative_error);
    out.set_metric("factorize_seconds",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
};

// org.qforge.dbf.layer: every format of the sign table
// (qforge_kernels/sign_format.hpp; org.qforge.dbf/1 is its row), held as a
// SignChain (1 bit per weight, no float32 copy of the signs), run through
// qforge_kernels/torch_sign.hpp: the sign kernels (AVX-512 / AVX2 / portable,
// picked at run time) for small batches, unpack + LibTorch GEMM for large
// ones. Its scale
// vectors are tunable (qforge.layer.tunable, qforge/ext/train.h): the signs
// stay, so a tuned layer is still in its format.
class SignLayer {
 public:
  static const char* const* formats() { return qk::sign_format_ids(); }

  SignLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
            const std::vector<const qforge_named_tensor*>& tensors) {
    row_ = qk::find_sign_format(format.c_str());
    if (row_ == nullptr)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, "org.qforge.dbf.layer does not read " + format);
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const qforge_named_tensor* nt : tensors) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        qforge::invalid_argument(format + ": a tensor without name or data");
      named.emplace_back(nt->name, qforge::borrow(*nt->tensor));
    }
    chain_ = qk::describe_sign(*row_, metadata, named);
    metadata_ = metadata;
  }

  int64_t out_features() const { return chain_.out_features(); }
  int64_t in_features() const { return chain_.in_features(); }

  // y = s_L ⊙ (S_L · ( … (S_1 · (s_0 ⊙ x)))) (+ bias)
  void forward(const DLTensor& xd, const DLTensor& yd) const {
    const at::Tensor x = rows_of(xd, "forward: x", in_features());
    const at::Tensor y = rows_of(yd, "forward: y", out_features());
    if (x.size(0) != y.size(0)) qforge::invalid_argument("forward: x and y have different rows");
    qk::aten::sign_forward(chain_, x, y);
  }

  // grad_x = grad_y · W: the chain backwards with each plane transposed.
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    const at::Tensor gy = rows_of(gyd, "backward_input: grad_y", out_features());
    const at::Tensor gx = rows_of(gxd, "backward_input: grad_x", in_features());
    if (gy.size(0) != gx.size(0))
      qforge::invalid_argument("backward_input: grad_y and grad_x have different rows");
    qk::aten::sign_backward_input(chain_, gy, gx);
  }

  // W = diag(s_L) S_L diag(s_(L−1)) ⋯ S_1 diag(s_0)
  void dequantize(const DLTensor& wd) const {
    at::Tensor w = qforge::borrow_float_cpu(wd, "dequantize: weight");
    if (w.dim() != 2 || w.size(0) != out_features() || w.size(1) != in_features())
      qforge::invalid_argument("dequantize: weight must be [" + std::to_string(out_features()) +
                               ", " + std::to_string(in_features()) + "], got " +
                               qforge::shape_str(w.sizes()));
    w.copy_(qk::aten::sign_dequantize(chain_));
  }

  // ---- qforge.layer.tunable: the scale vectors s_0 … s_L ----
  // ∂L/∂s_l from the chain's own backward (SignChain::backward_scales).
  // With the signs tuned (revision 3), plane l is sign(S⁰_l + V_l), V_l
  // clipped to [−2, 2], with the straight-through gradient ∂L/∂V_l = ∂L/∂S_l:
  // h_0 = s_0 ⊙ x, u_l = h_(l−1) S_lᵀ, h_l = s_l ⊙ u_l, y = h_L, so going
  // back from g = grad_y: ∂L/∂S_l = (g ⊙ s_l)ᵀ h_(l−1), g ← (g ⊙ s_l) S_l.
  uint32_t param_count() const {
    const uint32_t scales = static_cast<uint32_t>(chain_.planes() + 1);
    return tuning_ && !tuning_->offsets.empty() ? scales + static_cast<uint32_t>(chain_.planes()) : scales;
  }

  void param(uint32_t i, const char** name, const DLTensor** value) {
    if (i >= param_count())
      qforge::invalid_argument("the layer has " + std::to_string(param_count()) + " tunable params");
    Tuning& t = tuning();
    const uint32_t scales = static_cast<uint32_t>(chain_.planes() + 1);
    *name = i < scales ? row_->scale_names[i] : t.offset_names[i - scales].c_str();
    *value = t.views[i]->get();
  }

  void tune_codes() {
    Tuning& t = tuning();
    if (!t.offsets.empty()) return;
    if (row_->plane_names.size() != chain_.planes())
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, std::string(row_->id) + " names no plane tensors");
    for (size_t l = 0; l < chain_.planes(); ++l) {
      t.signs0.push_back(qk::aten::sign_unpacked(chain_, l));
      t.offsets.push_back(at::zeros_like(t.signs0.back()));
      t.offset_names.push_back(std::string("code_offsets.") + row_->plane_names[l]);
      t.views.push_back(std::make_unique<qforge::DLView>(t.offsets.back()));
    }
  }

  void backward_params(const DLTensor& xd, const DLTensor& gyd, const DLTensor* const* grads) {
    const at::Tensor x = rows_of(xd, "backward_params: x", in_features());
    const at::Tensor gy = rows_of(gyd, "backward_params: grad_y", out_features());
    if (x.size(0) != gy.size(0))
      qforge::invalid_argument("backward_params: x and grad_y have different rows");
    const uint32_t scales = static_cast<uint32_t>(chain_.planes() + 1);
    std::vector<float*> g;
    for (uint32_t i = 0; i < scales; ++i) {
      at::Tensor gi = qforge::borrow_float_cpu(*grads[i], "backward_params: grad");
      if (!gi.is_contiguous() || gi.numel() != static_cast<int64_t>(chain_.scale(i).size()))
        qforge::invalid_argument("backward_params: grad " + std::to_string(i) + " must be " +
                                 std::to_string(chain_.scale(i).size()) + " contiguous floats");
      g.push_back(gi.data_ptr<float>());
    }
    chain_.backward_scales(x.data_ptr<float>(), in_features(), gy.data_ptr<float>(),
                           out_features(), x.size(0), g.data(), qk::aten::parallel());
    if (param_count() == scales) return;
    std::vector<at::Tensor> h = {x * qk::aten::sign_scale(chain_, 0)};  // h_0 … h_(L−1)
    for (size_t l = 0; l + 1 < chain_.planes(); ++l)
      h.push_back(qk::aten::sign_times_plane(chain_, h.back(), l, false) * qk::aten::sign_scale(chain_, l + 1));
    at::Tensor back = gy;
    for (size_t l = chain_.planes(); l-- > 0;) {
      const at::Tensor gu = back * qk::aten::sign_scale(chain_, l + 1);
      qforge::borrow_float_cpu(*grads[scales + l], "backward_params: grad offsets").add_(gu.t().mm(h[l]));
      if (l > 0) back = qk::aten::sign_times_plane(chain_, gu, l, true);
    }
  }

  void update() {
    Tuning& t = tuning();
    for (uint32_t i = 0; i < chain_.planes() + 1; ++i) chain_.set_scale(i, t.scales[i].data_ptr<float>());
    if (t.offsets.empty()) return;
    std::vector<qk::SignPlane> planes;
    std::vector<std::vector<float>> scales;
    for (size_t l = 0; l < chain_.planes(); ++l) {
      t.offsets[l].clamp_(-2.0, 2.0);
      planes.push_back(plane_of((t.signs0[l] + t.offsets[l]) > 0));
    }
    for (size_t l = 0; l <= chain_.planes(); ++l) scales.push_back(chain_.scale(l));
    chain_ = qk::SignChain(std::move(planes), std::move(scales), chain_.bias());
  }

  // Revision 2: each scale vector rounded to the dtype its tensor has in the
  // format (float16 for dbf/1), the layer switched to them, and the format's
  // tensors with them written in (the sign planes copied, or with tuned
  // signs written as they now are).
  void store(const std::vector<const qforge_named_tensor*>& original,
             const qforge::QuantizeOutput& out) {
    Tuning& t = tuning();
    std::map<std::string, at::Tensor> named;
    for (const qforge_named_tensor* nt : original) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        qforge::invalid_argument("store: a tensor without name or data");
      named[nt->name] = qforge::borrow(*nt->tensor).clone();
    }
    auto held = [&](const char* name) -> at::Tensor& {
      auto it = named.find(name);
      if (it == named.end())
        qforge::invalid_argument(std::string("store: the original tensors lack '") + name + "'");
      return it->second;
    };
    for (uint32_t i = 0; i < chain_.planes() + 1; ++i) {
      at::Tensor& stored = held(row_->scale_names[i]);
      stored = t.scales[i].to(stored.scalar_type());
      t.scales[i].copy_(stored.to(at::kFloat));
    }
    update();
    for (size_t l = 0; !t.offsets.empty() && l < chain_.planes(); ++l) {
      at::Tensor& stored = held(row_->plane_names[l]);
      const std::vector<uint8_t> rows = chain_.plane(l).msb_rows();
      if (static_cast<int64_t>(rows.size()) != stored.numel() || stored.scalar_type() != at::kByte)
        qforge::invalid_argument(std::string("store: '") + row_->plane_names[l] + "' is not the plane's uint8 rows");
      std::memcpy(stored.data_ptr<uint8_t>(), rows.data(), rows.size());
    }
    out.set_format(row_->id, metadata_);
    for (const auto& [name, tensor] : named) out.add_tensor(name, tensor);
    out.set_dequantized(qk::aten::sign_dequantize(chain_));
  }

 private:
  // [rows, features] float32, contiguous (a borrowed DLTensor reshaped).
  static at::Tensor rows_of(const DLTensor& d, const char* what, int64_t features) {
    const at::Tensor t = qforge::borrow_float_cpu(d, what);
    if (t.dim() < 1 || t.size(-1) != features || !t.is_contiguous())
      qforge::invalid_argument(std::string(what) + " must be contiguous [..., " +
                               std::to_string(features) + "], got " + qforge::shape_str(t.sizes()));
    return t.view({-1, features});
  }

  struct Tuning {
    std::vector<at::Tensor> scales;  // float32 copies the host updates in place
    std::vector<at::Tensor> signs0, offsets;  // with tuned signs: S⁰_l (±1) and V_l, float32
    std::vector<std::string> offset_names;
    std::vector<std::unique_ptr<qforge::DLView>> views;  // scales, then offsets
  };
  // A plane from a bool [rows, cols] (true = +1).
  static qk::SignPlane plane_of(const at::Tensor& positive) {
    const int64_t rows = positive.size(0), cols = positive.size(1), bytes = (cols + 7) / 8;
    at::Tensor padded = at::ones({rows, bytes * 8}, at::kByte);  // tails 1, as msb_rows
    padded.narrow(1, 0, cols).copy_(positive);
    const at::Tensor weights = at::tensor({128, 64, 32, 16, 8, 4, 2, 1}, at::kInt);
    const at::Tensor packed = (padded.view({rows, bytes, 8}).to(at::kInt) * weights).sum(-1).to(at::kByte).contiguous();
    return qk::SignPlane(packed.data_ptr<uint8_t>(), rows, cols);
  }
  // Made on first use: inference alone never pays for it.
  Tuning& tuning() {
    if (tuning_) return *tuning_;
    auto t = std::make_unique<Tuning>();
    for (uint32_t i = 0; i < chain_.planes() + 1; ++i) {
      t->scales.push_back(qk::aten::sign_scale(chain_, i).clone());
      t->views.push_back(std::make_unique<qforge::DLView>(t->scales.back()));
    }
    tuning_ = std::move(t);
    return *tuning_;
  }

  const qk::SignFormat* row_ = nullptr;
  std::string metadata_;
  qk::SignChain chain_;
  std::unique_ptr<Tuning> tuning_;
};

void describe(qforge::Plugin& plugin) {
  plugin.quantizer<DbfQuantizer>(
          {"org.qforge.dbf", "Double binary factorization", "0.1.0", "qforge", "MIT",
           "W = diag(s4) S_A diag(s2) S_B diag(s0) with sign matrices S_A, S_B (Boza & Macko "
           "2025, arXiv 2505.11076) by alternating ADMM with the SVID projection, as OneComp "
           "(mode onecomp: Sinkhorn balancing, 600 iterations), or weighted by the layer's "
           "Hessian diagonal from the truncated SVD with a stopping rule (mode data-aware)."})
      .features({QFORGE_FEATURE_NEEDS_HESSIAN, "weight-only", "binary"})
      .param_float("target_bits", 1.5, 0.05, 64, "sign-plane bits per weight: k = floor(bits n m / (n + m))")
      .param_float("mlp_target_bits", 0, 0, 64, "target_bits for layers whose name has 'mlp' (0: target_bits)")
      .param_enum("mode", "data-aware", {"data-aware", "onecomp"},
                  "data-aware: Hessian-weighted, SVD start, stopping rule; onecomp: as OneComp")
      .param_int("iters", 600, 1, 100000, "outer iterations (data-aware: at most)")
      .param_float("tol", 1e-5, 0, 1, "data-aware: stop when the relative error moves less than this in 10 iterations")
      .param_bool("column_weights", true, "data-aware: factorize W diag(sqrt(diag H))")
      .param_int("scale_rounds", 5, 0, 1000, "data-aware: rounds fitting s4, s2, s0 to the output error with H")
      .param_float("reg", 3e-2, 0, 100, "ridge of the ADMM normal equations, relative to mean diag(L^T L)")
      .param_bool("use_balancing", true, "Sinkhorn pre-balancing of rows and columns")
      .param_int("balance_iters", 40, 0, 100000, "Sinkhorn sweeps at most")
      .param_float("balance_alpha", 1.0, 1e-9, 1e9, "target row norm of the balancing")
      .param_enum("balance_mode", "l1", {"l1", "l2"}, "balance l1 norms or squared l2 norms")
      .param_bool("use_adaptive_rho", true, "Boyd's residual balancing of the ADMM penalty")
      .param_int("seed", 0, 0, (1LL << 53), "seed of the Gaussian start (onecomp mode)");
  plugin.inference_layer<SignLayer>(
          {"org.qforge.dbf.layer", "DBF layer", "0.2.0", "qforge", "MIT",
           "Runs org.qforge.dbf/1, y = s4 (S_A (s2 (S_B (s0 x)))), from its 1-bit sign planes: "
           "packed sign kernels (AVX-512 / AVX2 / portable) for small batches, unpack + LibTorch "
           "GEMM for large ones; its scale vectors and (straight-through) signs are tunable."})
      .get_extension(&qforge::tunable_extension<SignLayer>);
}

}  // namespace

QFORGE_PLUGIN("qforge-dbf", "0.1.0", describe)
