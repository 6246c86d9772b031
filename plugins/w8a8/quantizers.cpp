// The quantizers of qforge-w8a8: weights on an 8-bit grid, activations
// quantized at run time — llm-compressor's W8A8-INT8 and FP8 schemes
// (research/llm-compressor.md §3, §6.3), stored in
// org.qforge.ct-naive-quantized/1 (qforge/formats/ct_naive_quantized_v1.h).
//
// org.qforge.w8a8  INT8 weights, symmetric, per output channel (or one scale
//                  for the tensor): round to nearest on the grid
//                  s = max|w| / 127.5, q = clamp(round(w / s), -128, 127)
//                  (compressed-tensors' calculate_qparams), or GPTQ (Frantar
//                  et al., 2023, Algorithm 1) on the same grid; activations
//                  int8 per token, dynamic (default) or one static scale per
//                  tensor from the calibration maximum.
// org.qforge.fp8   FP8 E4M3 weights, s = max|w| / 448 per channel or tensor,
//                  w ↦ e4m3(w / s) (or GPTQ choosing among the e4m3 values
//                  with the same scales); activations e4m3 per token
//                  (dynamic) or with one static scale per tensor.
// Scales are rounded to float16 before the codes are chosen, so the float16
// scales of a compressed-tensors checkpoint decode to exactly these weights.
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>
#include <qforge_kernels/fp8.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "gptq.hpp"
#include "w8a8.hpp"
#include "ct_naive_writer.hpp"

namespace qforge::w8a8 {
namespace {

// x rounded to the nearest float16 (saturating; 0 stays 0).
float to_half(float x) { return at::tensor(x).to(at::kHalf).to(at::kFloat).item<float>(); }

Scheme settings_of(const Params& p) {
  return {p.get_enum("weight_strategy") == "tensor", p.get_enum("activations") == "static"};
}

// The static input scale: the calibration maximum over every channel mapped
// to the largest code (127 for int8, 448 for e4m3), rounded to float16.
at::Tensor input_scale(const LayerInput& in, float largest) {
  if (!in.act_absmax.defined())
    invalid_argument("activations=static takes its scale from calibration data: give --calib FILE");
  const float t = in.act_absmax.max().item<float>();
  return at::full({1}, t > 0 ? to_half(t / largest) : 1.f, at::kFloat);
}

// The scale of each weight row (or one for the tensor): max |w| / largest,
// float16, never 0.
at::Tensor weight_scales(const at::Tensor& w, bool per_tensor, float largest) {
  at::Tensor t = per_tensor ? w.abs().max().reshape({1}) : std::get<0>(w.abs().max(1));
  t = (t / largest).to(at::kHalf).to(at::kFloat);
  return at::where(t > 0, t, at::ones_like(t));
}

// ---------------------------------------------------------------- INT8 --

// Round to nearest on the symmetric grid of each row (or of the tensor):
// grid.hpp's symmetric min/max grid is s = 2 max|w| / 255 with zero 128,
// i.e. compressed-tensors' s = max|w| / 127.5 and q ∈ [-128, 127].
void int8_rtn(const at::Tensor& w, bool per_tensor, at::Tensor& codes, at::Tensor& scales) {
  const int64_t out = w.size(0), in = w.size(1);
  grid::Spec spec;
  spec.bits = 8;
  spec.sym = true;
  spec.half_scales = true;
  const float* x = w.data_ptr<float>();
  const grid::Grid whole = per_tensor ? grid::find_params(x, out * in, spec) : grid::Grid{};
  codes = at::empty({out, in}, at::kChar);
  scales = at::empty({per_tensor ? 1 : out}, at::kFloat);
  at::parallel_for(0, out, std::max<int64_t>(1, 65536 / in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const grid::Grid g = per_tensor ? whole : grid::find_params(x + r * in, in, spec);
      if (!per_tensor || r == 0) scales.data_ptr<float>()[per_tensor ? 0 : r] = g.scale;
      int8_t* q = codes.data_ptr<int8_t>() + r * in;
      for (int64_t j = 0; j < in; ++j)
        q[j] = static_cast<int8_t>(grid::code_of(x[r * in + j], g, spec.maxq()) - g.zero);
    }
  });
}

// GPTQ (Frantar et al., 2023, Algorithm 1) on the same per-channel grid, or
// on e4m3 values with the same scales: columns in decreasing diag H order
// (llm-compressor's "static" act-order), damping 0.01 mean(diag H). The
// codes are the grid's (0..255, zero 128) or the e4m3 bytes; one scale per row.
gptq::Result gptq_rows(const Host& host, const LayerInput& in, const Params& p,
                       gptq::Settings::Codebook codebook, at::Tensor& scales) {
  if (!in.hessian.defined())
    invalid_argument("weights=gptq needs calibration data (a Hessian): give --calib FILE");
  gptq::Settings s;
  s.codebook = codebook;
  s.grid.bits = 8;
  s.grid.sym = true;
  s.grid.half_scales = true;
  s.group_size = in.in_features();
  s.desc_act = p.get_bool("desc_act");
  s.percdamp = p.get_float("percdamp");
  s.block_size = std::min<int64_t>(p.get_int("block_size"), in.in_features());
  gptq::Result r = gptq::gptq(host, s, in.weight.clone(at::MemoryFormat::Contiguous),
                              in.hessian.clone(at::MemoryFormat::Contiguous));
  scales = at::empty({in.out_features()}, at::kFloat);
  for (int64_t o = 0; o < in.out_features(); ++o) scales.data_ptr<float>()[o] = r.grids[o].scale;
  return r;
}

void gptq_params(ComponentBuilder& c) {
  c.param_enum("weights", "rtn", {"rtn", "gptq"},
               "weight codes by round-to-nearest, or by GPTQ with the same scales (needs --calib)")
      .param_bool("desc_act", true,
                  "GPTQ: columns by decreasing Hessian diagonal (llm-compressor's actorder static)")
      .param_float("percdamp", 0.01, 0, 1, "GPTQ: dampening, a fraction of mean(diag H)")
      .param_int("block_size", 128, 1, 1 << 20, "GPTQ: columns per lazy batch update");
}

// One quantizer for both types; K gives what differs: the metadata type,
// the largest code value (static input scales), the GPTQ codebook, and how
// codes are made by round-to-nearest and read back as values.
template <class K>
struct Quantizer8 {
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1, nullptr};
    return list;
  }
  static void quantize(const Host& host, const qforge_quantize_input& input, const Params& p,
                       const QuantizeOutput& out) {
    host.check_cancelled();
    const LayerInput in = LayerInput::from(input);
    const Scheme s = settings_of(p);
    const bool gptq = p.get_enum("weights") == "gptq";
    if (gptq && s.per_tensor) invalid_argument("weights=gptq takes weight_strategy=channel");
    at::Tensor codes, scales;
    if (gptq)
      codes = K::gptq_codes(gptq_rows(host, in, p, K::kCodebook, scales));
    else
      K::rtn(in.weight.contiguous(), s.per_tensor, codes, scales);
    const at::Tensor scale = s.per_tensor ? scales : scales.unsqueeze(1);
    const at::Tensor static_scale = s.static_inputs ? input_scale(in, K::kLargest) : at::Tensor();
    finish(out, in, metadata(K::kType, s, in.in_features(), in.out_features()), codes, scale,
           static_scale, K::values(codes) * scale);
  }
};

struct Int8 {
  static constexpr const char* kType = "int";
  static constexpr float kLargest = 127.f;
  static constexpr gptq::Settings::Codebook kCodebook = gptq::Settings::Codebook::uniform;
  // The grid's codes, zero 128: the symmetric 8-bit grid.
  static at::Tensor gptq_codes(const gptq::Result& r) {
    return (r.codes.to(at::kInt) - 128).to(at::kChar);
  }
  static void rtn(const at::Tensor& w, bool per_tensor, at::Tensor& codes, at::Tensor& scales) {
    int8_rtn(w, per_tensor, codes, scales);
  }
  static at::Tensor values(const at::Tensor& codes) { return codes.to(at::kFloat); }
};

// ----------------------------------------------------------------- FP8 --

struct Fp8 {
  static constexpr const char* kType = "float";
  static constexpr float kLargest = kernels::kFp8E4m3Max;
  static constexpr gptq::Settings::Codebook kCodebook = gptq::Settings::Codebook::fp8_e4m3;
  static at::Tensor gptq_codes(const gptq::Result& r) { return r.codes; }  // the e4m3 bytes
  // w ↦ e4m3(w / s), s = max|w| / 448 per row (or for the tensor) in float16.
  static void rtn(const at::Tensor& w, bool per_tensor, at::Tensor& codes, at::Tensor& scales) {
    scales = weight_scales(w, per_tensor, kernels::kFp8E4m3Max);
    codes = at::empty(w.sizes(), at::kByte);
    const int64_t n = w.numel(), cols = w.size(1);
    at::parallel_for(0, n, 65536, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        codes.data_ptr<uint8_t>()[k] = kernels::fp8_e4m3_from_float(
            w.data_ptr<float>()[k] / scales.data_ptr<float>()[per_tensor ? 0 : k / cols]);
    });
  }
  static at::Tensor values(const at::Tensor& codes) {
    at::Tensor v = at::empty(codes.sizes(), at::kFloat);
    for (int64_t k = 0; k < codes.numel(); ++k)
      v.data_ptr<float>()[k] = kernels::fp8_e4m3_to_float(codes.data_ptr<uint8_t>()[k]);
    return v;
  }
};

using Int8Quantizer = Quantizer8<Int8>;
using Fp8Quantizer = Quantizer8<Fp8>;

// --------------------------------------------------------------- schemes --

const qforge_scheme_desc kW8A8 = {sizeof(qforge_scheme_desc), 1, "W8A8",
                                  "weight_strategy=channel;activations=dynamic",
                                  "int8 weights per channel, int8 activations per token (dynamic)"};
const qforge_scheme_desc* const kInt8List[] = {&kW8A8};
const qforge_quantizer_schemes kInt8Schemes = {sizeof(qforge_quantizer_schemes), 1, kInt8List};

const qforge_scheme_desc kFp8 = {sizeof(qforge_scheme_desc), 1, "FP8",
                                 "weight_strategy=tensor;activations=static",
                                 "e4m3 weights per tensor, e4m3 activations per tensor (static)"};
const qforge_scheme_desc kFp8Dynamic = {
    sizeof(qforge_scheme_desc), 1, "FP8_DYNAMIC", "weight_strategy=channel;activations=dynamic",
    "e4m3 weights per channel, e4m3 activations per token (dynamic)"};
const qforge_scheme_desc* const kFp8List[] = {&kFp8, &kFp8Dynamic};
const qforge_quantizer_schemes kFp8Schemes = {sizeof(qforge_quantizer_schemes), 2, kFp8List};

const void* int8_extension(const char* id, uint32_t revision) {
  return offer_schemes(id, revision, &kInt8Schemes);
}
const void* fp8_extension(const char* id, uint32_t revision) {
  return offer_schemes(id, revision, &kFp8Schemes);
}

void common_params(ComponentBuilder& c) {
  c.formats({QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1})
      .param_enum("weight_strategy", "channel", {"channel", "tensor"},
                  "one weight scale per output channel, or one for the tensor")
      .param_enum("activations", "dynamic", {"dynamic", "static"},
                  "input activations quantized per token at run time (dynamic), or with one "
                  "scale per tensor from the calibration maximum (static: needs --calib)");
}

}  // namespace

void describe_quantizers(Plugin& plugin) {
  auto& int8 = plugin.quantizer<Int8Quantizer>(
      {"org.qforge.w8a8", "W8A8 INT8", "1.0.0", "qforge", "MIT",
       "INT8 weights (symmetric, per channel or tensor; round-to-nearest, or GPTQ with "
       "weights=gptq) and int8 input activations (per token dynamic, or per tensor static), "
       "multiplied in int8 with int32 sums by org.qforge.w8a8.layer: llm-compressor's W8A8 "
       "(compressed-tensors int-quantized). Pair it with --preprocess org.qforge.smoothquant."});
  common_params(int8);
  int8.features({QFORGE_FEATURE_CALIBRATION_FREE, QFORGE_FEATURE_NEEDS_ACT_ABSMAX,
                 QFORGE_FEATURE_NEEDS_HESSIAN, "per-channel", "activations"})
      .get_extension(&int8_extension);
  gptq_params(int8);
  auto& fp8 = plugin.quantizer<Fp8Quantizer>(
      {"org.qforge.fp8", "FP8 E4M3", "1.0.0", "qforge", "MIT",
       "FP8 E4M3 weights (scale max|w|/448 per channel or tensor) and e4m3 input activations "
       "(per token dynamic, or per tensor static), run by org.qforge.w8a8.layer: "
       "llm-compressor's FP8 and FP8_DYNAMIC (compressed-tensors float-quantized). With "
       "weights=gptq the e4m3 codes are chosen by GPTQ with the same scales (qforge's, not "
       "llm-compressor's: it rounds FP8 weights to nearest)."});
  common_params(fp8);
  fp8.features({QFORGE_FEATURE_CALIBRATION_FREE, QFORGE_FEATURE_NEEDS_ACT_ABSMAX,
                QFORGE_FEATURE_NEEDS_HESSIAN, "per-channel", "activations"})
      .get_extension(&fp8_extension);
  gptq_params(fp8);
}

}  // namespace qforge::w8a8
