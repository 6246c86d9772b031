// qforge-dbf: the quantizer org.qforge.dbf (dbf.cpp behind the plugin ABI),
// writing the packed format org.qforge.dbf/1 (qforge/formats/dbf_v1.h), and
// org.qforge.dbf.layer, which runs it: the sign planes unpacked once to
// float32 ±1, y = s4 ⊙ (S_A·(s2 ⊙ (S_B·(s0 ⊙ x)))) as two matrix products
// (packed 1-bit kernels are not written yet).
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/metadata.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/dbf_v1.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "dbf.hpp"

namespace {

namespace dbf = qforge::dbf;

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

at::Tensor unpack_signs(const at::Tensor& packed, int64_t rows, int64_t cols) {
  at::Tensor out = at::empty({rows, cols}, at::kFloat);
  const at::Tensor p = packed.contiguous();
  const uint8_t* src = p.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  const int64_t bytes = (cols + 7) / 8;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j)
      dst[r * cols + j] = (src[r * bytes + j / 8] & (0x80u >> (j % 8))) ? 1.0f : -1.0f;
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
  // 2 bits; 1e-5 gave 600 iterations' result in 3/4 of the time).
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

// The dbf/1 layer: its factors as float32 (signs ±1), checked against the metadata.
class DbfLayer {
 public:
  static const char* const* formats() { return DbfQuantizer::formats(); }

  DbfLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
           const std::vector<const qforge_named_tensor*>& tensors) {
    if (format != QFORGE_FORMAT_DBF_V1)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, "org.qforge.dbf.layer does not read " + format);
    const qforge::Metadata m = qforge::Metadata::parse(metadata);
    n_ = m.get_int(QFORGE_DBF_V1_OUT_FEATURES);
    in_ = m.get_int(QFORGE_DBF_V1_IN_FEATURES);
    k_ = m.get_int(QFORGE_DBF_V1_K);
    if (n_ < 1 || in_ < 1 || k_ < 1) qforge::invalid_argument("dbf/1: sizes must be >= 1");
    auto tensor = [&](const char* name, std::vector<int64_t> shape, at::ScalarType dtype) {
      at::Tensor t = qforge::tensor_named(tensors, name);
      if (t.scalar_type() != dtype || t.sizes() != at::IntArrayRef(shape))
        qforge::invalid_argument(std::string("dbf/1: tensor '") + name + "' must be " +
                                 std::string(at::toString(dtype)) + " " + qforge::shape_str(shape) +
                                 " for k = " + std::to_string(k_) + ", got " +
                                 std::string(at::toString(t.scalar_type())) + " " +
                                 qforge::shape_str(t.sizes()));
      return t;
    };
    sign_a_ = unpack_signs(tensor(QFORGE_DBF_V1_SIGN_A, {n_, (k_ + 7) / 8}, at::kByte), n_, k_);
    sign_b_ = unpack_signs(tensor(QFORGE_DBF_V1_SIGN_B, {k_, (in_ + 7) / 8}, at::kByte), k_, in_);
    s4_ = tensor(QFORGE_DBF_V1_S4, {n_}, at::kHalf).to(at::kFloat);
    s2_ = tensor(QFORGE_DBF_V1_S2, {k_}, at::kHalf).to(at::kFloat);
    s0_ = tensor(QFORGE_DBF_V1_S0, {in_}, at::kHalf).to(at::kFloat);
    for (const qforge_named_tensor* t : tensors)
      if (t && t->name && std::strcmp(t->name, QFORGE_DBF_V1_BIAS) == 0)
        bias_ = tensor(QFORGE_DBF_V1_BIAS, {n_}, at::kFloat).clone();
  }

  int64_t out_features() const { return n_; }
  int64_t in_features() const { return in_; }

  // y = s4 ⊙ (S_A · (s2 ⊙ (S_B · (s0 ⊙ x)))) (+ bias)
  void forward(const DLTensor& xd, const DLTensor& yd) const {
    const at::Tensor x = qforge::borrow_float_cpu(xd, "forward: x").reshape({-1, in_});
    at::Tensor y = qforge::borrow_float_cpu(yd, "forward: y").view({-1, n_});
    at::Tensor h = at::matmul(x * s0_, sign_b_.t()) * s2_;
    at::Tensor r = at::matmul(h, sign_a_.t()) * s4_;
    if (bias_.defined()) r.add_(bias_);
    y.copy_(r);
  }

  // grad_x = grad_y·W = s0 ⊙ (S_Bᵀ · (s2 ⊙ (S_Aᵀ · (s4 ⊙ grad_y))))
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    const at::Tensor gy = qforge::borrow_float_cpu(gyd, "backward_input: grad_y").reshape({-1, n_});
    at::Tensor gx = qforge::borrow_float_cpu(gxd, "backward_input: grad_x").view({-1, in_});
    gx.copy_(at::matmul(at::matmul(gy * s4_, sign_a_) * s2_, sign_b_) * s0_);
  }

  void dequantize(const DLTensor& wd) const {
    at::Tensor w = qforge::borrow_float_cpu(wd, "dequantize: weight");
    w.copy_(s4_.unsqueeze(1) * (sign_a_ * s2_.unsqueeze(0)).mm(sign_b_) * s0_.unsqueeze(0));
  }

 private:
  int64_t n_ = 0, in_ = 0, k_ = 0;
  at::Tensor sign_a_, sign_b_, s4_, s2_, s0_, bias_;
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
  plugin.inference_layer<DbfLayer>(
      {"org.qforge.dbf.layer", "DBF layer", "0.1.0", "qforge", "MIT",
       "Runs org.qforge.dbf/1: y = s4 (S_A (s2 (S_B (s0 x)))) with the sign planes unpacked "
       "once to float32 (two matrix products; packed 1-bit kernels are not written yet)."});
}

}  // namespace

QFORGE_PLUGIN("qforge-dbf", "0.1.0", describe)
