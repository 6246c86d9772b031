// An out-of-tree plugin written with the SDK's LibTorch helpers: Hessian-
// weighted ternary quantization and the inference layer of its format.
//
// Each group of `group_size` input columns of an output row becomes
// {-a, 0, +a}: a weight is kept when |w| > delta · mean|w| of its group (the
// threshold of Ternary Weight Networks, Li et al. 2016, eq. 9, delta = 0.7),
// and a = Σ d|w| / Σ d over the kept weights, with d = diag(H) + damping, the
// scale minimising Σ d (w − q)² for that support (the layer's output error
// under a diagonal H).
#include <ATen/ATen.h>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/metadata.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <algorithm>

namespace {

constexpr const char* kFormat = "org.example.ternary/1";

struct Ternary {
  at::Tensor codes;   // [out, in] int8 in {-1, 0, 1}
  at::Tensor scales;  // [out, groups] float32
};

// W [out, in] and d [in] padded to whole groups of g: [out, groups, g].
Ternary ternarize(const at::Tensor& w, const at::Tensor& d, int64_t g, double delta) {
  const int64_t out_f = w.size(0), in_f = w.size(1), groups = (in_f + g - 1) / g;
  const int64_t pad = groups * g - in_f;
  at::Tensor wg = at::constant_pad_nd(w, {0, pad}).view({out_f, groups, g});
  at::Tensor dg = at::constant_pad_nd(d, {0, pad}).view({1, groups, g});
  at::Tensor real = at::constant_pad_nd(at::ones({in_f}), {0, pad}).view({1, groups, g});
  at::Tensor keep = wg.abs().gt(delta * wg.abs().sum(-1, true) / real.sum(-1, true));
  at::Tensor dk = dg * keep;
  at::Tensor a = (dk * wg.abs()).sum(-1) / dk.sum(-1).clamp_min(1e-12);
  at::Tensor codes = (wg.sign() * keep).view({out_f, groups * g}).narrow(1, 0, in_f);
  return {codes.to(at::kChar).contiguous(), a.contiguous()};
}

// codes · scales, the weight the format stands for.
at::Tensor decode(const at::Tensor& codes, const at::Tensor& scales, int64_t g) {
  return codes.to(at::kFloat) * scales.repeat_interleave(g, 1).narrow(1, 0, codes.size(1));
}

struct TernaryQuantizer {
  static void quantize(const qforge::Host&, const qforge_quantize_input& input,
                       const qforge::Params& p, const qforge::QuantizeOutput& out) {
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    const int64_t g = std::min(p.get_int("group_size"), in.in_features());
    at::Tensor d = in.hessian.defined() ? in.hessian.diagonal().clamp_min(0)
                                        : at::ones({in.in_features()});
    d = d + p.get_float("percdamp") * d.mean() + 1e-12;
    Ternary t = ternarize(in.weight, d, g, p.get_float("delta"));
    out.set_format(kFormat, qforge::Metadata{{"group_size", g}});
    out.add_tensor("codes", t.codes);
    out.add_tensor("scales", t.scales);
    if (in.bias.defined()) out.add_tensor("bias", in.bias);
    out.set_dequantized(decode(t.codes, t.scales, g));
  }
};

struct TernaryLayer : qforge::DenseLayer {
  TernaryLayer(const qforge::Host&, const std::string&, const std::string& metadata,
               const std::vector<const qforge_named_tensor*>& tensors) {
    const int64_t g = qforge::Metadata::parse(metadata).get_int("group_size");
    weight = decode(qforge::tensor_named(tensors, "codes"), qforge::tensor_named(tensors, "scales"), g);
    at::Tensor b = qforge::tensor_named(tensors, "bias", /*required=*/false);
    if (b.defined()) bias = b.clone();  // borrowed: keep a copy
  }
};

void describe(qforge::Plugin& p) {
  p.quantizer<TernaryQuantizer>({"org.example.ternary", "Hessian-weighted ternary", "1.0.0",
                                 "Example Corp", "MIT",
                                 "Per-group {-a, 0, +a}: TWN threshold, diag(H)-weighted scale."})
      .formats({kFormat})
      .features({QFORGE_FEATURE_NEEDS_HESSIAN, "weight-only", "per-group"})
      .param_int("group_size", 32, 1, 1 << 20, "input columns sharing one scale")
      .param_float("delta", 0.7, 0, 2, "keep |w| > delta * mean|w| of the group")
      .param_float("percdamp", 0.01, 0, 1, "add percdamp * mean(diag H) to diag H");
  p.inference_layer<TernaryLayer>({"org.example.ternary.layer", "Ternary layer", "1.0.0",
                                   "Example Corp", "MIT", "Runs org.example.ternary/1."})
      .formats({kFormat});
}

}  // namespace

QFORGE_PLUGIN("example-ternary", "1.0.0", describe)
