// qforge-quip: the quantizer org.qforge.quip (quip.cpp behind the plugin
// ABI), writing the packed format org.qforge.quip/1 (qforge/formats/quip_v1.h):
// Q̂'s codes and float16 grid, the rescaling vector, and the transforms'
// signs and (when no Hadamard matrix of the size is built in) the seed of
// their random orthogonal base — everything needed to decode. org.qforge.affine.layer runs it (the format is a row of the
// affine table with transforms).
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/quip_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <string>

#include "quip.hpp"

namespace {

namespace grid = qforge::grid;
namespace quip = qforge::quip;

// A per-layer seed: the `seed` parameter mixed with the layer's name
// (FNV-1a), so layers get different transforms, the same on every run.
uint64_t layer_seed(uint64_t seed, const std::string& layer) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : layer) h = (h ^ c) * 1099511628211ull;
  return h;
}

at::Tensor pack_codes(const at::Tensor& codes, int bits) {
  const int64_t out = codes.size(0), in = codes.size(1), words = qforge::kernels::words_for(in, bits);
  at::Tensor q = at::empty({out, words}, at::kInt);
  const uint8_t* src = codes.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(q.data_ptr<int32_t>());
  for (int64_t o = 0; o < out; ++o) qforge::kernels::pack_bits(src + o * in, in, bits, dst + o * words);
  return q;
}

at::Tensor signs_of(const quip::Transform& t) {
  return at::tensor(t.t->signs(), at::kFloat).to(at::kChar);
}

struct QuipQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_QUIP_V1, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    if (!in.hessian.defined())
      qforge::invalid_argument("QuIP needs the layer's Hessian (calibration data)");
    const std::string layer = input.layer_name ? input.layer_name : "";
    quip::Settings s;
    s.bits = grid::bits(params);
    s.per_tensor = params.get_enum("scale") == "tensor";
    s.group_size = grid::group_size(params, in.in_features());
    s.sym = params.get_bool("sym");
    s.mse = params.get_bool("mse");
    s.percdamp = params.get_float("percdamp");
    s.greedy_passes = static_cast<int>(params.get_int("greedy_passes"));
    s.rescale = params.get_bool("rescale");
    s.output_transform = s.per_tensor;
    s.seed = layer_seed(static_cast<uint64_t>(params.get_int("seed")), layer);
    const auto t0 = std::chrono::steady_clock::now();
    const quip::Result r = quip::quantize(host, in.weight, in.hessian, s);
    const int64_t n = in.out_features(), m = in.in_features();
    auto kind = [](const quip::Transform& t) {
      if (!t.t) return QFORGE_QUIP_V1_KIND_NONE;
      return t.hadamard_base ? QFORGE_QUIP_V1_KIND_HADAMARD : QFORGE_QUIP_V1_KIND_RANDOM;
    };
    nlohmann::json meta = {{QFORGE_QUIP_V1_BITS, s.bits},
                           {QFORGE_QUIP_V1_GROUP_SIZE, r.group_size},
                           {QFORGE_QUIP_V1_IN_FEATURES, m},
                           {QFORGE_QUIP_V1_OUT_FEATURES, n},
                           {QFORGE_QUIP_V1_U_BASE_KIND, kind(r.u)},
                           {QFORGE_QUIP_V1_V_POW2, r.v.t->pow2()},
                           {QFORGE_QUIP_V1_V_BASE, r.v.t->base_order()},
                           {QFORGE_QUIP_V1_V_BASE_KIND, kind(r.v)},
                           {QFORGE_QUIP_V1_SEED, s.seed}};
    if (r.u.t) {
      meta[QFORGE_QUIP_V1_U_POW2] = r.u.t->pow2();
      meta[QFORGE_QUIP_V1_U_BASE] = r.u.t->base_order();
      if (!r.u.hadamard_base) meta[QFORGE_QUIP_V1_U_SEED] = r.u.base_seed;
    }
    if (!r.v.hadamard_base) meta[QFORGE_QUIP_V1_V_SEED] = r.v.base_seed;
    out.set_format(QFORGE_FORMAT_QUIP_V1, meta.dump());
    out.add_tensor(QFORGE_QUIP_V1_QWEIGHT, qforge::export_tensor(pack_codes(r.codes, s.bits)));
    out.add_tensor(QFORGE_QUIP_V1_SCALES, qforge::export_tensor(r.scales.to(at::kHalf)));
    // Zero points: uint8 when they are integers (per-group grids), else float16.
    const bool integral = r.zeros.eq(r.zeros.round()).all().item<bool>();
    out.add_tensor(QFORGE_QUIP_V1_ZEROS,
                   qforge::export_tensor(r.zeros.to(integral ? at::kByte : at::kHalf)));
    out.add_tensor(QFORGE_QUIP_V1_RESCALE, qforge::export_tensor(r.rescale.to(at::kHalf)));
    if (r.u.t) out.add_tensor(QFORGE_QUIP_V1_SIGN_U, qforge::export_tensor(signs_of(r.u)));
    out.add_tensor(QFORGE_QUIP_V1_SIGN_V, qforge::export_tensor(signs_of(r.v)));
    if (in.bias.defined()) out.add_tensor(QFORGE_QUIP_V1_BIAS, qforge::export_tensor(in.bias));
    out.set_dequantized(qforge::export_tensor(r.dequantized));
    out.set_metric("proxy_loss", r.proxy_loss);
    out.set_metric("percdamp", r.percdamp_used);
    out.set_metric("quantize_seconds",
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
};

void describe(qforge::Plugin& plugin) {
  plugin.quantizer<QuipQuantizer>(
          {"org.qforge.quip", "QuIP", "0.1.0", "qforge", "MIT",
           "QuIP (Chee et al. 2023): pre-rescaling, incoherence processing with stored "
           "randomized Hadamard transforms (a seeded random orthogonal base where no Hadamard "
           "matrix of the size is built in), LDLQ rounding with optional greedy passes; grids "
           "per tensor with both sides transformed (the paper's) or min/max per group with the "
           "inputs transformed."})
      .features({QFORGE_FEATURE_NEEDS_HESSIAN, "weight-only", "per-group", "per-channel"})
      .param_int("bits", 2, 2, 8, "bits per code")
      .param_enum("scale", "group", {"group", "tensor"},
                  "group: min/max per row and group (group_size), inputs transformed (V) and "
                  "outputs not; tensor: one scale, 2^bits levels over [-2.4 RMS, 2.4 RMS], both "
                  "transformed (U and V: the paper's and OneComp's)")
      .param_int("group_size", 128, -1, 1048576, "input columns per group (-1: one per row)")
      .param_bool("sym", false, "symmetric per-group grid")
      .param_bool("mse", false, "per-group grid: shrink the range to the least error (GPTQ's search)")
      .param_float("percdamp", 0.01, 0, 10, "dampening of H, relative to mean(diag H)")
      .param_int("greedy_passes", 0, 0, 100, "coordinate-descent passes after LDLQ")
      .param_bool("rescale", true, "pre-rescale W and H by (H_jj / (W^T W)_jj)^(1/4)")
      .param_int("seed", 0, 0, (1LL << 53), "seed of the transforms (mixed with the layer name)");
}

}  // namespace

QFORGE_PLUGIN("qforge-quip", "0.1.0", describe)
