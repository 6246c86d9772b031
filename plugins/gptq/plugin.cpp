// qforge-gptq: the quantizer org.qforge.gptq, GPTQ (gptq.cpp) behind the
// plugin ABI. It writes the packed format org.qforge.gptq/1, AutoGPTQ's v1
// layout (qforge/formats/gptq_v1.h), which org.qforge.affine.layer runs.
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/gptq_v1.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gptq.hpp"

namespace {

namespace grid = qforge::grid;
using qforge::gptq::Settings;

// gptq/1's grid (gptq_v1_settings) with GPTQ's own options.
Settings settings(const qforge::Params& params, int64_t in_f) {
  Settings s = qforge::gptq::gptq_v1_settings(params, in_f);
  s.grid.mse = params.get_bool("mse");
  s.desc_act = params.get_bool("desc_act");
  s.static_groups = params.get_bool("static_groups");
  return s;
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
    const Settings s = settings(params, in.in_features());
    if (!in.hessian.defined())
      qforge::invalid_argument(
          "GPTQ needs calibration (a Hessian): run it through the pipeline "
          "with calibration data");

    // Working copies: the inputs are only borrowed.
    const qforge::gptq::Result r =
        qforge::gptq::gptq(host, s, in.weight.clone(at::MemoryFormat::Contiguous),
                           in.hessian.clone(at::MemoryFormat::Contiguous));
    qforge::gptq::write_gptq_v1(out, s, r, in);
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
