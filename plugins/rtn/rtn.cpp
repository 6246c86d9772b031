// qforge-rtn: round-to-nearest (RTN) weight quantization, the baseline of GPTQ
// (Frantar et al., 2023): every weight rounded to the nearest point of its
// group's min/max grid (qforge/cpp/grid.hpp, quant.py's Quantizer), with no
// calibration data. Writes the packed format org.qforge.rtn/1
// (qforge/formats/rtn_v1.h), which org.qforge.affine.layer runs.
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/rtn_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace {

namespace grid = qforge::grid;

// Rows per at::parallel_for task: about 64K elements.
int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 65536 / row_length); }

struct RtnQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_RTN_V1, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    const int64_t out_f = in.out_features(), in_f = in.in_features();
    grid::Spec spec;
    spec.bits = grid::bits(params);
    spec.sym = params.get_bool("sym");
    const int64_t group_size = grid::group_size(params, in_f);
    const int64_t groups = (in_f + group_size - 1) / group_size;
    const int64_t words = qforge::kernels::words_for(in_f, spec.bits);

    // Every output row and group on its own grid: codes packed row by row,
    // W' = scale · (q − zero).
    const at::Tensor w = in.weight.contiguous();
    at::Tensor qweight = at::empty({out_f, words}, at::kInt);
    at::Tensor scales = at::empty({out_f, groups}, at::kFloat);
    at::Tensor zeros = at::empty({out_f, groups}, at::kByte);
    at::Tensor dequant = at::empty({out_f, in_f}, at::kFloat);
    std::vector<float> row_error(static_cast<size_t>(out_f));
    at::parallel_for(0, out_f, row_grain(in_f), [&](int64_t r0, int64_t r1) {
      std::vector<uint8_t> codes(static_cast<size_t>(in_f));
      for (int64_t r = r0; r < r1; ++r) {
        const float* x = w.data_ptr<float>() + r * in_f;
        float* wq = dequant.data_ptr<float>() + r * in_f;
        float error = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t j0 = g * group_size, j1 = std::min(in_f, j0 + group_size);
          const grid::Grid gr = grid::find_params(x + j0, j1 - j0, spec);
          scales.data_ptr<float>()[r * groups + g] = gr.scale;
          zeros.data_ptr<uint8_t>()[r * groups + g] = static_cast<uint8_t>(gr.zero);
          for (int64_t j = j0; j < j1; ++j) {
            const float q = grid::code_of(x[j], gr, spec.maxq());
            codes[j] = static_cast<uint8_t>(q);
            wq[j] = grid::value_of(q, gr);
            error = std::max(error, std::fabs(x[j] - wq[j]));
          }
        }
        qforge::kernels::pack_bits(
            codes.data(), in_f, spec.bits,
            reinterpret_cast<uint32_t*>(qweight.data_ptr<int32_t>()) + r * words);
        row_error[r] = error;
      }
    });
    if (!at::isfinite(scales).all().item<bool>())
      qforge::invalid_argument("weight range too large for float32");

    const nlohmann::json meta = {{QFORGE_RTN_V1_BITS, spec.bits},
                                 {QFORGE_RTN_V1_GROUP_SIZE, group_size},
                                 {QFORGE_RTN_V1_SYM, spec.sym},
                                 {QFORGE_RTN_V1_IN_FEATURES, in_f},
                                 {QFORGE_RTN_V1_OUT_FEATURES, out_f}};
    out.set_format(QFORGE_FORMAT_RTN_V1, meta.dump());
    out.add_tensor(QFORGE_RTN_V1_QWEIGHT, qforge::export_tensor(qweight));
    out.add_tensor(QFORGE_RTN_V1_SCALES, qforge::export_tensor(scales));
    out.add_tensor(QFORGE_RTN_V1_ZEROS, qforge::export_tensor(zeros));
    if (in.bias.defined()) out.add_tensor(QFORGE_RTN_V1_BIAS, qforge::export_tensor(in.bias));
    out.set_dequantized(qforge::export_tensor(dequant));
    out.set_metric("max_abs_error", *std::max_element(row_error.begin(), row_error.end()));
  }
};

// llm-compressor's weight-only presets (compressed-tensors quant_scheme.py,
// research/llm-compressor.md §6.3): its QuantizationModifier is RTN, so RTN
// is their default implementation.
const qforge_scheme_desc kW4A16 = {sizeof(qforge_scheme_desc), 1, "W4A16",
                                   "bits=4;group_size=128;sym=true",
                                   "int4 weights, groups of 128, symmetric"};
const qforge_scheme_desc kW4A16Asym = {sizeof(qforge_scheme_desc), 1, "W4A16_ASYM",
                                       "bits=4;group_size=128;sym=false",
                                       "int4 weights, groups of 128, asymmetric"};
const qforge_scheme_desc kW8A16 = {sizeof(qforge_scheme_desc), 1, "W8A16",
                                   "bits=8;group_size=128;sym=true",
                                   "int8 weights, groups of 128 (compressed-tensors >= 0.16)"};
const qforge_scheme_desc* const kSchemeList[] = {&kW4A16, &kW4A16Asym, &kW8A16};
const qforge_quantizer_schemes kSchemes = {sizeof(qforge_quantizer_schemes), 3, kSchemeList};

const void* extension(const char* id, uint32_t revision) {
  return qforge::offer_schemes(id, revision, &kSchemes);
}

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const features[] = {"weight-only", "calibration-free", "per-group",
                                           "per-channel", nullptr};
    static const qforge_param_desc bits = grid::bits_param();
    static const qforge_param_desc group_size = grid::group_size_param();
    static const qforge_param_desc sym = grid::sym_param();
    static const qforge_param_desc* const params[] = {&bits, &group_size, &sym};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_QUANTIZER, "org.qforge.rtn", "Round-to-nearest", "1.0.0", "qforge", "MIT",
        "Round-to-nearest uniform quantization with per-group min/max scales and zero points, "
        "the RTN baseline of GPTQ (Frantar et al., 2022, quant.py). Needs no calibration data.",
        features, params, static_cast<uint32_t>(sizeof params / sizeof params[0]),
        qforge::quantizer_vtable<RtnQuantizer>()));
    l.back().get_extension = &extension;
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-rtn", "1.0.0", components)
