// qforge-gptq: the quantizer org.qforge.gptq, GPTQ (gptq.cpp) behind the
// plugin ABI. It writes the packed format org.qforge.gptq/1, AutoGPTQ's v1
// layout (qforge/formats/gptq_v1.h), which org.qforge.affine.layer runs.
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/gptq_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>
#include <vector>

#include "gptq.hpp"

namespace {

namespace grid = qforge::grid;
using qforge::gptq::Settings;
using qforge::kernels::pack_bits;
using qforge::kernels::words_for;

Settings settings(const qforge::Params& params, int64_t in_f) {
  Settings s;
  s.grid.bits = grid::bits(params);
  s.grid.sym = params.get_bool("sym");
  s.grid.mse = params.get_bool("mse");
  // What gptq/1 stores, applied before the grid is used so that GPTQ
  // compensates for it: float16 scales, and zero − 1, which can't hold an
  // asymmetric zero of 0 (a group whose weights are all ≥ 0: it loses its top
  // grid point instead of wrapping around).
  s.grid.half_scales = true;
  s.grid.zero_min = QFORGE_GPTQ_V1_ZERO_OFFSET;
  s.group_size = grid::group_size(params, in_f);
  s.desc_act = params.get_bool("desc_act");
  s.static_groups = params.get_bool("static_groups");
  s.percdamp = params.get_float("percdamp");
  if (!(s.percdamp >= 0 && s.percdamp <= 1))
    qforge::invalid_argument("percdamp must be in [0, 1], got " + std::to_string(s.percdamp));
  const int64_t block_size = params.get_int("block_size");
  if (block_size < 1) qforge::invalid_argument("block_size must be >= 1");
  s.block_size = std::min(block_size, in_f);
  return s;
}

// qweight [words(in), out]: column o is output o's codes along the input
// (packed as rows of [out, words], then transposed).
at::Tensor pack_qweight(const at::Tensor& codes, int bits) {
  const int64_t out = codes.size(0), in = codes.size(1), words = words_for(in, bits);
  at::Tensor rows = at::empty({out, words}, at::kInt);
  const uint8_t* src = codes.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(rows.data_ptr<int32_t>());
  at::parallel_for(0, out, std::max<int64_t>(1, 65536 / in), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) pack_bits(src + o * in, in, bits, dst + o * words);
  });
  return rows.t().contiguous();
}

// qzeros [groups, words(out)]: row g is zero − 1 of every output.
at::Tensor pack_qzeros(const std::vector<grid::Grid>& grids, int64_t groups, int64_t out,
                       int bits) {
  const int64_t words = words_for(out, bits);
  at::Tensor qzeros = at::empty({groups, words}, at::kInt);
  auto* dst = reinterpret_cast<uint32_t*>(qzeros.data_ptr<int32_t>());
  std::vector<uint8_t> z(static_cast<size_t>(out));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t o = 0; o < out; ++o)
      z[o] = static_cast<uint8_t>(grids[g * out + o].zero - QFORGE_GPTQ_V1_ZERO_OFFSET);
    pack_bits(z.data(), out, bits, dst + g * words);
  }
  return qzeros;
}

// scales float16 [groups, out]
at::Tensor pack_scales(const std::vector<grid::Grid>& grids, int64_t groups, int64_t out) {
  at::Tensor scales = at::empty({groups, out}, at::kFloat);
  float* p = scales.data_ptr<float>();
  for (size_t k = 0; k < grids.size(); ++k) p[k] = grids[k].scale;
  if (!at::isfinite(scales).all().item<bool>())
    qforge::invalid_argument("GPTQ: a group's scale exceeds float16's range (weights too large)");
  return scales.to(at::kHalf);  // exact: the scales are float16 values already
}

struct GptqQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_GPTQ_V1, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    const int64_t out_f = in.out_features(), in_f = in.in_features();
    const Settings s = settings(params, in_f);
    if (!in.hessian.defined())
      qforge::invalid_argument(
          "GPTQ needs calibration (a Hessian): run it through the pipeline "
          "with calibration data");

    // Working copies: the inputs are only borrowed.
    const qforge::gptq::Result r =
        qforge::gptq::gptq(host, s, in.weight.clone(at::MemoryFormat::Contiguous),
                           in.hessian.clone(at::MemoryFormat::Contiguous));
    const at::Tensor scales = pack_scales(r.grids, r.groups, out_f);
    if (!at::isfinite(r.Q).all().item<bool>())
      qforge::invalid_argument("GPTQ produced non-finite weights (is the Hessian badly scaled?)");
    at::Tensor g_idx = at::empty({in_f}, at::kInt);
    std::copy(r.g_idx.begin(), r.g_idx.end(), g_idx.data_ptr<int32_t>());

    const nlohmann::json meta = {
        {QFORGE_GPTQ_V1_BITS, s.grid.bits},
        {QFORGE_GPTQ_V1_GROUP_SIZE, s.group_size},
        {QFORGE_GPTQ_V1_SYM, s.grid.sym},
        {QFORGE_GPTQ_V1_DESC_ACT, s.desc_act},
        {QFORGE_GPTQ_V1_STATIC_GROUPS, s.static_groups},
        {QFORGE_GPTQ_V1_IN_FEATURES, in_f},
        {QFORGE_GPTQ_V1_OUT_FEATURES, out_f},
        {QFORGE_GPTQ_V1_CHECKPOINT_FORMAT, QFORGE_GPTQ_V1_CHECKPOINT_FORMAT_V1},
        {QFORGE_GPTQ_V1_ZERO_POINT_MIN, QFORGE_GPTQ_V1_ZERO_OFFSET},
        {QFORGE_GPTQ_V1_DAMP_PERCENT, r.percdamp_used},
        {QFORGE_GPTQ_V1_MSE, s.grid.mse}};
    out.set_format(QFORGE_FORMAT_GPTQ_V1, meta.dump());
    out.add_tensor(QFORGE_GPTQ_V1_QWEIGHT,
                   qforge::export_tensor(pack_qweight(r.codes, s.grid.bits)));
    out.add_tensor(QFORGE_GPTQ_V1_QZEROS,
                   qforge::export_tensor(pack_qzeros(r.grids, r.groups, out_f, s.grid.bits)));
    out.add_tensor(QFORGE_GPTQ_V1_SCALES, qforge::export_tensor(scales));
    out.add_tensor(QFORGE_GPTQ_V1_G_IDX, qforge::export_tensor(g_idx));
    if (in.bias.defined()) out.add_tensor(QFORGE_GPTQ_V1_BIAS, qforge::export_tensor(in.bias));
    out.set_dequantized(qforge::export_tensor(r.Q));
    out.set_metric("hessian_error", r.hessian_error);
    out.set_metric("max_abs_error", (r.Q - in.weight).abs().max().item<double>());
    out.set_metric("percdamp_used", r.percdamp_used);
    out.set_metric("dead_inputs", static_cast<double>(r.dead_inputs));
  }
};

// llm-compressor's weight-only presets as its GPTQModifier runs them
// (research/llm-compressor.md §6.3, §6.5): actorder "static" (columns by
// decreasing diag H, natural groups) and scales fixed from the original
// weight before the loop (static groups).
const qforge_scheme_desc kW4A16 = {
    sizeof(qforge_scheme_desc), 0, "W4A16",
    "bits=4;group_size=128;sym=true;desc_act=true;static_groups=true",
    "int4 weights, groups of 128, symmetric, actorder static"};
const qforge_scheme_desc kW4A16Asym = {
    sizeof(qforge_scheme_desc), 0, "W4A16_ASYM",
    "bits=4;group_size=128;sym=false;desc_act=true;static_groups=true",
    "int4 weights, groups of 128, asymmetric, actorder static"};
const qforge_scheme_desc kW8A16 = {
    sizeof(qforge_scheme_desc), 0, "W8A16",
    "bits=8;group_size=128;sym=true;desc_act=true;static_groups=true",
    "int8 weights, groups of 128, actorder static"};
const qforge_scheme_desc* const kSchemeList[] = {&kW4A16, &kW4A16Asym, &kW8A16};
const qforge_quantizer_schemes kSchemes = {sizeof(qforge_quantizer_schemes), 3, kSchemeList};

const void* extension(const char* id, uint32_t revision) {
  return qforge::offer_schemes(id, revision, &kSchemes);
}

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const features[] = {"weight-only", "needs-hessian", "per-group",
                                           "per-channel", "act-order",     nullptr};
    static const qforge_param_desc bits =
        grid::bits_param("bits per weight code, 2..8 (2, 3, 4 and 8 are the tested widths)");
    static const qforge_param_desc group_size = grid::group_size_param();
    static const qforge_param_desc sym = grid::sym_param(
        "symmetric grid with a fixed zero point (true) or asymmetric min/max with a per-group "
        "zero point, kept >= 1 for the v1 format (false)");
    static const qforge_param_desc desc_act = qforge::param(
        QFORGE_PARAM_BOOL, "desc_act",
        "act-order: quantize the input columns by decreasing Hessian diagonal", "false");
    static const qforge_param_desc static_groups =
        qforge::param(QFORGE_PARAM_BOOL, "static_groups",
                      "compute every group's scale/zero from the original weights before the loop "
                      "(g_idx stays sequential with desc_act)",
                      "false");
    static const qforge_param_desc percdamp = qforge::param_range(
        QFORGE_PARAM_FLOAT, "percdamp",
        "dampening: add percdamp * mean(diag H) to the Hessian's diagonal", "0.01", 0, 1);
    static const qforge_param_desc block_size = qforge::param_range(
        QFORGE_PARAM_INT, "block_size",
        "columns per lazy batch update; as in the reference, grids of groups that start "
        "inside a block see the weights as of the block's start",
        "128", 1, 1048576);
    static const qforge_param_desc mse = qforge::param(
        QFORGE_PARAM_BOOL, "mse",
        "search shrunk grids for the least |error|^2.4 (grid 100, maxshrink 0.8), as the "
        "reference Quantizer's mse option",
        "false");
    static const qforge_param_desc* const params[] = {
        &bits, &group_size, &sym, &desc_act, &static_groups, &percdamp, &block_size, &mse};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_QUANTIZER, "org.qforge.gptq", "GPTQ", "1.0.0", "qforge", "MIT",
        "GPTQ (Frantar et al., 2022, arXiv:2210.17323, Algorithm 1): quantizes the columns "
        "one at a time and compensates each one's error on the columns not yet quantized "
        "through the inverse Hessian of the layer's calibration inputs (Cholesky form, lazy "
        "batch updates). Optional act-order, static groups and the mse grid search. Writes "
        "AutoGPTQ v1 packed tensors.",
        features, params, static_cast<uint32_t>(sizeof params / sizeof params[0]),
        qforge::quantizer_vtable<GptqQuantizer>()));
    l.back().get_extension = &extension;
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-gptq", "1.0.0", components)
