// qforge-rtn: round-to-nearest (RTN) weight quantization and the inference
// layer that runs its packed format.
//
// Components
//   org.qforge.rtn         quantizer, writes "org.qforge.rtn/1"
//   org.qforge.rtn.layer   inference layer, consumes "org.qforge.rtn/1"
//
// Algorithm (the min/max asymmetric-or-symmetric uniform quantizer of the GPTQ
// reference implementation, Frantar et al. 2022, `quant.py`, class Quantizer
// with perchannel=True; RTN is what GPTQ compares against). For every output
// row and every group of `group_size` consecutive input columns (the last
// group is shorter when group_size does not divide in_features; there are
// ceil(in / group_size) groups; group_size -1 means one group per row):
//
//   xmin = min(0, min w)             xmax = max(0, max w)
//   sym:  xmax = max(|xmin|, xmax);  xmin = -xmax when xmin < 0
//   xmin == xmax (all zero):  xmin = -1, xmax = 1
//   maxq  = 2^bits - 1
//   scale = (xmax - xmin) / maxq
//   zero  = sym ? (maxq + 1) / 2 : round(-xmin / scale)
//   q     = clamp(round(w / scale) + zero, 0, maxq)
//   w'    = scale * (q - zero)
//
// everything in float32, round() being round-half-to-even (torch.round), exactly
// as the reference does. Like the reference, a symmetric group whose weights
// are all >= 0 keeps xmin = 0 and so only uses the codes >= zero; its positive
// weights above (maxq-1)/2 * scale are clipped. That is the published
// behaviour and is kept so that results match GPTQ/AutoGPTQ's RTN baselines.
//
// Packed format "org.qforge.rtn/1"
//   metadata  {"bits":B, "group_size":G, "sym":bool, "in_features":I,
//              "out_features":O}; G is the effective group size (I for
//              per-channel); groups = ceil(I / G).
//   qweight   int32   [O, ceil(I*B/32)]  row r holds the I codes of output r,
//                                        packed along the input dimension as
//                                        one little-endian LSB-first bit
//                                        stream (qforge_kernels/bitpack.hpp)
//   scales    float32 [O, groups]
//   zeros     uint8   [O, groups]        always present; (maxq+1)/2 when sym
//   bias      float32 [O]                only when the layer has a bias
//   W[r, j] = scales[r, g] * (code[r, j] - zeros[r, g]),  g = j / G
//
// The inference layer repacks the tensors once into a kernels/ PackedMatrix
// (B bits per weight plus the per-group scales and zero points, no float32
// copy of W) and runs it through qforge_kernels/torch_layer.hpp, shared with
// the GPTQ layer: up to kGemvMaxRows rows of x the packed SIMD kernels
// (AVX-512 / AVX2 / portable, picked at run time) compute y directly from the
// codes; larger batches and backward_input dequantize W block by block into
// one reused 4 MiB buffer and multiply with a LibTorch GEMM, so the transient
// memory stays bounded whatever the layer size. dequantize gives W bit for
// bit as the quantizer's dequantized weight.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/packed_matrix.hpp>
#include <qforge_kernels/torch_layer.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

constexpr const char* kFormat = "org.qforge.rtn/1";
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

using qforge::kernels::aten::invalid;
using qforge::kernels::aten::require_float_cpu;
using qforge::kernels::aten::shape_str;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per at::parallel_for task: about 64K elements.
int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 65536 / row_length); }

// max |a - b| over two contiguous float32 tensors of the same shape, without
// allocating a temporary of their size.
double max_abs_difference(const at::Tensor& a, const at::Tensor& b) {
  const float* pa = a.data_ptr<float>();
  const float* pb = b.data_ptr<float>();
  const int64_t rows = a.size(0), cols = a.numel() / std::max<int64_t>(1, a.size(0));
  std::vector<float> row_max(static_cast<size_t>(rows), 0.f);
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float m = 0.f;
      const float* x = pa + r * cols;
      const float* y = pb + r * cols;
      for (int64_t j = 0; j < cols; ++j) m = std::max(m, std::fabs(x[j] - y[j]));
      row_max[r] = m;
    }
  });
  return rows ? *std::max_element(row_max.begin(), row_max.end()) : 0.0;
}

// ---------------------------------------------------------------------------
// Quantizer
// ---------------------------------------------------------------------------

struct RtnQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {kFormat, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const int64_t bits = params.get_int("bits");
    if (bits < qforge::kernels::kMinPackBits || bits > qforge::kernels::kMaxPackBits)
      invalid("bits must be in [2, 8], got " + std::to_string(bits));
    const int64_t group_size = params.get_int("group_size");
    if (group_size == 0 || group_size < -1)
      invalid("group_size must be -1 (one group per output channel) or a positive number of "
              "input columns, got " + std::to_string(group_size));
    const bool sym = params.get_bool("sym");

    if (input.weight == nullptr) invalid("no weight given");
    const at::Tensor w = qforge::borrow(*input.weight);
    require_float_cpu(w, "weight");
    if (w.dim() != 2 || w.size(0) < 1 || w.size(1) < 1 || w.size(0) > kMaxDim ||
        w.size(1) > kMaxDim)
      invalid("weight must be a non-empty 2-D [out, in] tensor, got " + shape_str(w.sizes()));
    const int64_t out_f = w.size(0), in_f = w.size(1);

    at::Tensor bias;
    if (input.bias != nullptr) {
      bias = qforge::borrow(*input.bias);
      require_float_cpu(bias, "bias");
      if (bias.dim() != 1 || bias.size(0) != out_f)
        invalid("bias must be [" + std::to_string(out_f) + "], got " + shape_str(bias.sizes()));
      bias = bias.clone(at::MemoryFormat::Contiguous);  // the input is only borrowed
    }

    const int64_t maxq = (int64_t{1} << bits) - 1;
    const int64_t gs = group_size == -1 ? in_f : group_size;  // effective, as recorded
    const int64_t groups = ceil_div(in_f, gs);
    // Columns per group in the padded [out, groups, width] view. With one group
    // it is in_f, so a group_size larger than the layer never over-allocates.
    const int64_t width = groups == 1 ? in_f : gs;
    const int64_t padded = groups * width;

    // Zero padding is neutral: xmin/xmax already include 0, and padded codes
    // are dropped before packing.
    const at::Tensor wc = w.contiguous();
    const at::Tensor wg = (padded == in_f ? wc : at::constant_pad_nd(wc, {0, padded - in_f}, 0))
                              .view({out_f, groups, width});

    at::Tensor xmin = at::amin(wg, 2).clamp_max_(0);  // min(0, min w); NaN propagates
    at::Tensor xmax = at::amax(wg, 2).clamp_min_(0);  // max(0, max w)
    if (sym) {
      xmax = at::maximum(xmin.abs(), xmax);
      xmin = at::where(xmin.lt(0), xmax.neg(), xmin);
    }
    const at::Tensor all_zero = xmin.eq(0).logical_and_(xmax.eq(0));
    xmin.masked_fill_(all_zero, -1);
    xmax.masked_fill_(all_zero, 1);
    const at::Tensor scale = (xmax - xmin).div_(static_cast<double>(maxq));  // [out, groups]
    // NaN or infinite weights make their group's scale NaN or infinite, so
    // this one check on the small scale tensor covers them.
    if (!at::isfinite(scale).all().item<bool>())
      invalid("weight contains NaN or infinite values (or a range too large for float32)");
    const at::Tensor zero = sym ? at::full_like(scale, static_cast<double>((maxq + 1) / 2))
                                : at::round(xmin.neg() / scale);
    const at::Tensor scale3 = scale.unsqueeze(2), zero3 = zero.unsqueeze(2);

    // q = clamp(round(w / scale) + zero, 0, maxq): one new tensor, then in place.
    at::Tensor q = at::div(wg, scale3).round_().add_(zero3).clamp_(0, static_cast<double>(maxq));

    // Pack every row of codes along the input dimension.
    const int64_t words = qforge::kernels::words_for(in_f, static_cast<int>(bits));
    at::Tensor qweight = at::empty({out_f, words}, at::kInt);
    {
      const float* src = q.data_ptr<float>();
      auto* dst = reinterpret_cast<uint32_t*>(qweight.data_ptr<int32_t>());
      at::parallel_for(0, out_f, row_grain(in_f), [&](int64_t begin, int64_t end) {
        std::vector<uint8_t> codes(static_cast<size_t>(in_f));
        for (int64_t r = begin; r < end; ++r) {
          const float* row = src + r * padded;
          for (int64_t j = 0; j < in_f; ++j) codes[j] = static_cast<uint8_t>(row[j]);
          qforge::kernels::pack_bits(codes.data(), in_f, static_cast<int>(bits), dst + r * words);
        }
      });
    }

    // scale * (q - zero), in place; drop the padding columns, if any.
    at::Tensor dequant = q.sub_(zero3).mul_(scale3).view({out_f, padded});
    if (padded != in_f) dequant = dequant.narrow(1, 0, in_f).contiguous();

    const double max_abs_error = max_abs_difference(wc, dequant);

    nlohmann::json meta = {{"bits", bits},         {"group_size", gs},
                           {"sym", sym},           {"in_features", in_f},
                           {"out_features", out_f}};
    out.set_format(kFormat, meta.dump());
    out.add_tensor("qweight", qforge::export_tensor(qweight));
    out.add_tensor("scales", qforge::export_tensor(scale.contiguous()));
    out.add_tensor("zeros", qforge::export_tensor(zero.to(at::kByte).contiguous()));
    if (bias.defined()) out.add_tensor("bias", qforge::export_tensor(bias));
    out.set_dequantized(qforge::export_tensor(dequant));
    out.set_metric("max_abs_error", max_abs_error);
  }
};

// ---------------------------------------------------------------------------
// Inference layer
// ---------------------------------------------------------------------------

int64_t meta_int(const nlohmann::json& m, const char* key, int64_t lo, int64_t hi) {
  return qforge::kernels::aten::meta_int(m, kFormat, key, lo, hi);
}

class RtnLayer : public qforge::kernels::aten::MatrixLayer {
 public:
  static const char* const* formats() {
    static const char* const list[] = {kFormat, nullptr};
    return list;
  }

  RtnLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
           const std::vector<const qforge_named_tensor*>& tensors) {
    if (format != kFormat)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                          "org.qforge.rtn.layer does not consume format '" + format + "'");
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(metadata);
    } catch (const nlohmann::json::exception& e) {
      invalid(std::string(kFormat) + " metadata is not valid JSON: " + e.what());
    }
    if (!m.is_object()) invalid(std::string(kFormat) + " metadata must be a JSON object");
    bits_ = static_cast<int>(meta_int(m, "bits", 2, 8));
    group_size_ = meta_int(m, "group_size", 1, kMaxDim);
    in_ = meta_int(m, "in_features", 1, kMaxDim);
    out_ = meta_int(m, "out_features", 1, kMaxDim);
    const auto sym = m.find("sym");
    if (sym == m.end() || !sym->is_boolean())
      invalid(std::string(kFormat) + " metadata \"sym\" must be true or false");
    groups_ = ceil_div(in_, group_size_);
    words_ = qforge::kernels::words_for(in_, bits_);

    const qforge::kernels::aten::PackedTensors packed(kFormat, tensors,
                                                      {"qweight", "scales", "zeros", "bias"});
    const at::Tensor qweight =
        packed.take("qweight", {DLDataType{kDLInt, 32, 1}}, {out_, words_}, true);
    const at::Tensor scales =
        packed.take("scales", {DLDataType{kDLFloat, 32, 1}}, {out_, groups_}, true);
    const at::Tensor zeros =
        packed.take("zeros", {DLDataType{kDLUInt, 8, 1}}, {out_, groups_}, true);
    const at::Tensor bias = packed.take("bias", {DLDataType{kDLFloat, 32, 1}}, {out_}, false);
    const int64_t maxq = (int64_t{1} << bits_) - 1;
    if (zeros.gt(maxq).any().item<bool>())
      invalid(std::string(kFormat) + ": zeros exceed 2^bits - 1 = " + std::to_string(maxq));
    if (bias.defined()) bias_ = bias.clone();  // the rest is repacked; the inputs are borrowed

    // qweight [out, words]: output o's stream is row o; scales, zeros [out, groups].
    const at::Tensor zeros_f = zeros.to(at::kFloat);
    qforge::kernels::QuantizedWeight w;
    w.bits = bits_;
    w.in_features = in_;
    w.out_features = out_;
    w.codes = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
    w.code_word_stride = 1;
    w.code_out_stride = words_;
    w.groups = groups_;
    w.group_size = group_size_;
    w.scales = scales.data_ptr<float>();
    w.scale_group_stride = 1;
    w.scale_out_stride = groups_;
    w.zeros = zeros_f.data_ptr<float>();
    w.zero_group_stride = 1;
    w.zero_out_stride = groups_;
    try {
      matrix_ = qforge::kernels::aten::pack(w);
    } catch (const std::invalid_argument& e) {
      invalid(std::string(kFormat) + ": " + e.what());
    }
  }


 private:

  int bits_ = 0;
  int64_t group_size_ = 0, groups_ = 0, words_ = 0;
};

// ---------------------------------------------------------------------------
// Plugin
// ---------------------------------------------------------------------------

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const quantizer_features[] = {"weight-only", "calibration-free",
                                                     "per-group", "per-channel", nullptr};
    static const char* const layer_features[] = {"cpu", "packed-kernels", nullptr};
    static const qforge_param_desc bits =
        qforge::param_range(QFORGE_PARAM_INT, "bits", "bits per weight code (2..8)", "4", 2, 8);
    static const qforge_param_desc group_size = qforge::param_range(
        QFORGE_PARAM_INT, "group_size",
        "input columns sharing one scale/zero; -1 = one group per output channel "
        "(per-channel); 0 is invalid",
        "128", -1, 1048576);
    static const qforge_param_desc sym =
        qforge::param(QFORGE_PARAM_BOOL, "sym",
                      "symmetric grid with a fixed zero point (true) or asymmetric min/max "
                      "with a per-group zero point (false)",
                      "true");
    static const qforge_param_desc* const params[] = {&bits, &group_size, &sym};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_QUANTIZER, "org.qforge.rtn", "Round-to-nearest", "1.0.0", "qforge",
        "MIT",
        "Round-to-nearest uniform quantization with per-group min/max scales and zero points, "
        "the RTN baseline of GPTQ (Frantar et al., 2022, quant.py). Needs no calibration data.",
        quantizer_features, params, static_cast<uint32_t>(sizeof params / sizeof params[0]),
        qforge::quantizer_vtable<RtnQuantizer>()));
    l.push_back(qforge::component(
        QFORGE_COMPONENT_INFERENCE_LAYER, "org.qforge.rtn.layer", "RTN packed layer", "1.0.0",
        "qforge", "MIT",
        "Runs org.qforge.rtn/1 layers on the CPU: keeps the bit-packed codes with per-group "
        "scales and zero points; packed AVX-512/AVX2 kernels for small batches, dequantize + "
        "LibTorch GEMM for large ones.",
        layer_features, nullptr, 0, qforge::inference_layer_vtable<RtnLayer>()));
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-rtn", "1.0.0", components)
