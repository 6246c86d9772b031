// org.qforge.w8a8.layer: runs org.qforge.ct-naive-quantized/1
// (qforge/formats/ct_naive_quantized_v1.h) with its activations quantized as
// the format defines, so that a model evaluated through it is the W8A8 / FP8
// model and not a weight-only approximation:
//   int   weights, int8 activations: int8 × int8 products summed in int32
//         (qforge_kernels/int8_matmul.hpp: AVX2 vpmaddubsw, AVX-512 VNNI,
//         AMX, portable; picked at run time), y = sum · s_x · s_w + bias;
//   float weights, e4m3 activations: x rounded to e4m3 per token or with the
//         static scale, weights decoded from their bytes, float32 sums
//         (qforge_kernels/fp8.hpp);
//   float weights without input activations (naive-quantized): y = x Ŵᵀ.
// backward_input (for training around a frozen layer) uses the dequantized
// weight: the straight-through estimator of the activation rounding.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>
#include <qforge_kernels/torch_w8a8.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <optional>

#include "w8a8.hpp"

namespace qforge::w8a8 {
namespace {

using nlohmann::json;

// The format's metadata, checked.
struct Description {
  bool float_weights = false, per_tensor = false;
  bool has_inputs = false, static_inputs = false;
  int64_t in = 0, out = 0;
};

const json& object(const json& m, const char* key) {
  if (!m.contains(key) || !m[key].is_object())
    invalid_argument(std::string("metadata: \"") + key + "\" must be an object");
  return m[key];
}

std::string text(const json& args, const char* key, const char* where) {
  if (!args.contains(key) || !args[key].is_string())
    invalid_argument(std::string("metadata: ") + where + "." + key + " must be a string");
  return args[key].get<std::string>();
}

// num_bits 8 and symmetric, the only arguments this layer runs; the type.
bool float_type(const json& args, const char* where) {
  if (!args.contains(QFORGE_CT_META_NUM_BITS) || args[QFORGE_CT_META_NUM_BITS] != 8)
    invalid_argument(std::string("metadata: ") + where + ".num_bits must be 8");
  if (!args.contains(QFORGE_CT_META_SYMMETRIC) || args[QFORGE_CT_META_SYMMETRIC] != true)
    invalid_argument(std::string("metadata: ") + where + ".symmetric must be true");
  const std::string type = text(args, QFORGE_CT_META_TYPE, where);
  if (type != "int" && type != "float")
    invalid_argument(std::string("metadata: ") + where + ".type must be \"int\" or \"float\"");
  return type == "float";
}

Description describe(const std::string& metadata) {
  const json m = json::parse(metadata, nullptr, false);
  if (!m.is_object()) invalid_argument("metadata is not a JSON object");
  Description d;
  const json& w = object(m, QFORGE_CT_META_WEIGHTS);
  d.float_weights = float_type(w, "weights");
  const std::string ws = text(w, QFORGE_CT_META_STRATEGY, "weights");
  if (ws != "channel" && ws != "tensor")
    invalid_argument("metadata: weights.strategy must be \"channel\" or \"tensor\"");
  d.per_tensor = ws == "tensor";
  const json a = m.value(QFORGE_CT_META_INPUT_ACTIVATIONS, json());
  d.has_inputs = !a.is_null();
  if (d.has_inputs) {
    if (!a.is_object()) invalid_argument("metadata: input_activations must be an object or null");
    if (float_type(a, "input_activations") != d.float_weights)
      invalid_argument("metadata: weights and input_activations must have one type");
    const std::string as = text(a, QFORGE_CT_META_STRATEGY, "input_activations");
    const bool dynamic = a.value(QFORGE_CT_META_DYNAMIC, false) == true;
    if (!((as == "token" && dynamic) || (as == "tensor" && !dynamic)))
      invalid_argument("metadata: input_activations must be token dynamic or tensor static");
    d.static_inputs = !dynamic;
  } else if (!d.float_weights) {
    invalid_argument("metadata: int weights need input_activations (W8A16 is pack-quantized)");
  }
  for (auto [key, field] : {std::pair{QFORGE_CT_META_IN_FEATURES, &d.in},
                            std::pair{QFORGE_CT_META_OUT_FEATURES, &d.out}}) {
    if (!m.contains(key) || !m[key].is_number_integer() || m[key].get<int64_t>() < 1)
      invalid_argument(std::string("metadata: ") + key + " must be a positive integer");
    *field = m[key].get<int64_t>();
  }
  return d;
}

// weight_scale as [out] float32: [out, 1], [out] or one value for the tensor.
at::Tensor scales_of(const at::Tensor& t, const Description& d) {
  if (t.scalar_type() != at::kFloat) invalid_argument("weight_scale must be float32");
  const int64_t want = d.per_tensor ? 1 : d.out;
  if (t.numel() != want || (t.dim() == 2 && t.size(1) != 1) || t.dim() > 2)
    invalid_argument("weight_scale must be [" + std::to_string(want) + (d.per_tensor ? "]" : ", 1]") +
                     ", got " + shape_str(t.sizes()));
  at::Tensor s = t.reshape({want}).contiguous().clone();
  if (!(s > 0).all().item<bool>() || !at::isfinite(s).all().item<bool>())
    invalid_argument("weight_scale must be finite and positive");
  return d.per_tensor ? s.expand({d.out}).contiguous() : s;
}

float static_scale_of(const std::vector<const qforge_named_tensor*>& tensors, const Description& d) {
  const at::Tensor t = tensor_named(tensors, QFORGE_CT_INPUT_SCALE, d.static_inputs);
  if (!d.static_inputs) {
    if (t.defined()) invalid_argument("input_scale is given for dynamic activations");
    return 0.f;
  }
  if (t.scalar_type() != at::kFloat || t.numel() != 1)
    invalid_argument("input_scale must be float32 [1]");
  const float s = t.reshape({1})[0].item<float>();
  if (!(s > 0) || !std::isfinite(s)) invalid_argument("input_scale must be finite and positive");
  return s;
}

class W8a8Layer {
 public:
  static const char* const* formats() {
    static const char* const list[] = {QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1, nullptr};
    return list;
  }

  W8a8Layer(const Host&, const std::string&, const std::string& metadata,
            const std::vector<const qforge_named_tensor*>& tensors)
      : d_(describe(metadata)) {
    const at::Tensor w = tensor_named(tensors, QFORGE_CT_WEIGHT);
    const at::ScalarType want = d_.float_weights ? at::kByte : at::kChar;
    if (w.scalar_type() != want || w.dim() != 2 || w.size(0) != d_.out || w.size(1) != d_.in)
      invalid_argument(std::string("weight must be ") + (d_.float_weights ? "uint8" : "int8") +
                       " [" + std::to_string(d_.out) + ", " + std::to_string(d_.in) + "], got " +
                       shape_str(w.sizes()));
    const at::Tensor scales = scales_of(tensor_named(tensors, QFORGE_CT_NAIVE_WEIGHT_SCALE), d_);
    const float input_scale = static_scale_of(tensors, d_);
    bias_ = tensor_named(tensors, QFORGE_CT_NAIVE_BIAS, false);
    if (bias_.defined()) {
      if (bias_.scalar_type() != at::kFloat || bias_.dim() != 1 || bias_.size(0) != d_.out)
        invalid_argument("bias must be float32 [" + std::to_string(d_.out) + "]");
      bias_ = bias_.contiguous().clone();
    }
    const at::Tensor codes = w.contiguous();
    const std::optional<float> static_scale =
        input_scale > 0 ? std::optional<float>(input_scale) : std::nullopt;
    if (d_.float_weights)
      fp8_ = std::make_unique<kernels::aten::Fp8Linear>(codes, scales, bias_, static_scale);
    else
      int8_ = std::make_unique<kernels::aten::Int8Linear>(codes, scales, bias_, static_scale);
  }

  int64_t out_features() const { return d_.out; }
  int64_t in_features() const { return d_.in; }

  void forward(const DLTensor& x, const DLTensor& y) const {
    const at::Tensor in = borrow(x).reshape({-1, d_.in}).to(at::kFloat);
    at::Tensor out = borrow(y).view({-1, d_.out});
    if (!d_.has_inputs)  // FP8 weights alone: float32 activations
      out.copy_(at::linear(in, fp8_->dequantize(), bias_));
    else
      out.copy_(d_.float_weights ? fp8_->forward(in) : int8_->forward(in));
  }
  void backward_input(const DLTensor& grad_y, const DLTensor& grad_x) const {
    const at::Tensor gy = borrow(grad_y).reshape({-1, d_.out}).to(at::kFloat);
    borrow(grad_x).view({-1, d_.in}).copy_(d_.float_weights ? fp8_->backward_input(gy)
                                                            : int8_->backward_input(gy));
  }
  void dequantize(const DLTensor& out) const {
    borrow(out).copy_(d_.float_weights ? fp8_->dequantize() : int8_->dequantize());
  }

 private:
  Description d_;
  at::Tensor bias_;
  std::unique_ptr<kernels::aten::Int8Linear> int8_;
  std::unique_ptr<kernels::aten::Fp8Linear> fp8_;
};

}  // namespace

void describe_layer(Plugin& plugin) {
  plugin.inference_layer<W8a8Layer>(
      {"org.qforge.w8a8.layer", "W8A8 / FP8 layer", "1.0.0", "qforge", "MIT",
       "Runs org.qforge.ct-naive-quantized/1 with its activations quantized at run time as "
       "the format defines: int8 per token (or static per tensor) times int8 weights with "
       "int32 sums (AVX2, AVX-512 VNNI, AMX or portable kernels), or e4m3-rounded "
       "activations times e4m3 weights decoded from their bytes."});
}

}  // namespace qforge::w8a8
