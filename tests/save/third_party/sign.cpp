// qforge-example-sign: a third-party method as an outside vendor would ship
// it, for tests/save/native_test.cpp and native_cli_test.sh: a quantizer
// writing its own packed format and the inference layer that runs it, built
// with the SDK's C++ helpers only (no qforge kernel, no format of the table),
// so that --save-format qforge must store and load a format it has never
// heard of.
//
// Packed format "org.example.sign/1": 1-bit signs with one scale per output
// row (XNOR-Net, Rastegari et al., ECCV 2016: W_r ≈ α_r·sign(W_r), α_r =
// mean |W_r|), for W [O, I]:
//   signs  uint8   [O, ceil(I/8)]  bit i % 8 of byte i / 8 of row o is 1 for
//                                  +1 (W[o, i] >= 0), 0 for -1; pad bits 0
//   scale  float32 [O]             α_o
//   bias   float32 [O]             only when the layer has a bias
// metadata {"in_features": I, "out_features": O,
//           "packing": {"bits": 1, "order": "lsb-first"}}
// Decoding: W[o, i] = scale[o] · (bit ? +1 : -1), in float32.
//
// Test instrumentation: the quantizer's `name_clash` parameter names the
// signs tensor "weight", which a checkpoint cannot store beside a dense name.
#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace {

constexpr const char* kFormat = "org.example.sign/1";

// W [O, I] from the packed signs [O, ceil(I/8)] and scale [O].
at::Tensor decode(const at::Tensor& signs, const at::Tensor& scale, int64_t in) {
  const at::Tensor bytes = signs.to(at::kInt).unsqueeze(-1);              // [O, B, 1]
  const at::Tensor shifts = at::arange(8, at::kInt);                      // [8]
  const at::Tensor bits = bytes.bitwise_right_shift(shifts).bitwise_and(1)  // [O, B, 8]
                              .reshape({signs.size(0), -1}).narrow(1, 0, in);
  return (bits.to(at::kFloat) * 2 - 1) * scale.unsqueeze(1);
}

struct SignQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {kFormat, nullptr};
    return list;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    const qforge::LayerInput in = qforge::LayerInput::from(input);
    const int64_t rows = in.out_features(), cols = in.in_features();
    const at::Tensor scale = in.weight.abs().mean(1).contiguous();
    // Bits LSB first, 8 inputs a byte; the tail of the last byte is 0.
    const int64_t bytes = (cols + 7) / 8;
    at::Tensor bits = at::zeros({rows, bytes * 8}, at::kInt);
    bits.narrow(1, 0, cols).copy_(in.weight.ge(0).to(at::kInt));
    const at::Tensor signs =
        bits.reshape({rows, bytes, 8}).bitwise_left_shift(at::arange(8, at::kInt)).sum(2)
            .to(at::kByte).contiguous();
    const nlohmann::json meta = {{"in_features", cols},
                                 {"out_features", rows},
                                 {"packing", {{"bits", 1}, {"order", "lsb-first"}}}};
    out.set_format(kFormat, meta.dump());
    out.add_tensor(params.get_bool("name_clash") ? "weight" : "signs",
                   qforge::export_tensor(signs));
    out.add_tensor("scale", qforge::export_tensor(scale));
    if (in.bias.defined()) out.add_tensor("bias", qforge::export_tensor(in.bias));
    out.set_dequantized(qforge::export_tensor(decode(signs, scale, cols).contiguous()));
  }
};

class SignLayer {
 public:
  static const char* const* formats() { return SignQuantizer::formats(); }

  SignLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
            const std::vector<const qforge_named_tensor*>& tensors) {
    if (format != kFormat)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, "org.example.sign.layer reads " +
                                                         std::string(kFormat) + ", not " + format);
    const nlohmann::json m = nlohmann::json::parse(metadata, nullptr, false);
    if (!m.is_object() || !m.contains("in_features") || !m["in_features"].is_number_integer() ||
        !m.contains("out_features") || !m["out_features"].is_number_integer())
      qforge::invalid_argument(std::string(kFormat) +
                               ": metadata needs in_features and out_features");
    in_ = m["in_features"].get<int64_t>();
    out_ = m["out_features"].get<int64_t>();
    if (in_ < 1 || out_ < 1) qforge::invalid_argument(std::string(kFormat) + ": bad shape");
    at::Tensor signs, scale;
    for (const qforge_named_tensor* nt : tensors) {
      const std::string name = nt->name;
      const at::Tensor t = qforge::borrow(*nt->tensor);
      if (name == "signs") signs = t;
      else if (name == "scale") scale = t;
      else if (name == "bias") bias_ = t.to(at::kFloat).clone();
      else qforge::invalid_argument(std::string(kFormat) + ": unknown tensor '" + name + "'");
    }
    expect(signs, "signs", at::kByte, {out_, (in_ + 7) / 8});
    expect(scale, "scale", at::kFloat, {out_});
    if (bias_.defined()) expect(bias_, "bias", at::kFloat, {out_});
    weight_ = decode(signs, scale, in_).contiguous();  // a copy: the tensors are borrowed
  }

  int64_t out_features() const { return out_; }
  int64_t in_features() const { return in_; }

  void forward(const DLTensor& xd, const DLTensor& yd) const {
    const at::Tensor x = qforge::borrow_float_cpu(xd, "x"), y = qforge::borrow_float_cpu(yd, "y");
    at::Tensor r = at::matmul(x, weight_.t());
    if (bias_.defined()) r.add_(bias_);
    y.copy_(r);
  }
  void backward_input(const DLTensor& gyd, const DLTensor& gxd) const {
    const at::Tensor gy = qforge::borrow_float_cpu(gyd, "grad_y");
    qforge::borrow_float_cpu(gxd, "grad_x").copy_(at::matmul(gy, weight_));
  }
  void dequantize(const DLTensor& wd) const {
    qforge::borrow_float_cpu(wd, "weight").copy_(weight_);
  }

 private:
  static void expect(const at::Tensor& t, const char* name, at::ScalarType dtype,
                     std::vector<int64_t> shape) {
    if (!t.defined() || t.scalar_type() != dtype || t.sizes().vec() != shape)
      qforge::invalid_argument(std::string(kFormat) + ": tensor '" + name + "' must be " +
                               at::toString(dtype) + " " + qforge::shape_str(shape));
  }
  int64_t in_ = 0, out_ = 0;
  at::Tensor weight_, bias_;
};

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const features[] = {"weight-only", "calibration-free", nullptr};
    static const char* const layer_features[] = {"cpu", nullptr};
    static const qforge_param_desc clash = qforge::param(
        QFORGE_PARAM_BOOL, "name_clash", "test instrumentation: name the signs tensor 'weight'",
        "false");
    static const qforge_param_desc* const params[] = {&clash};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_QUANTIZER, "org.example.sign", "Example sign", "1.0.0", "example.org",
        "MIT", "1-bit signs with a scale per row (a third-party format for the save tests).",
        features, params, 1, qforge::quantizer_vtable<SignQuantizer>()));
    l.push_back(qforge::component(
        QFORGE_COMPONENT_INFERENCE_LAYER, "org.example.sign.layer", "Example sign layer",
        "1.0.0", "example.org", "MIT", "Runs org.example.sign/1.", layer_features, nullptr, 0,
        qforge::inference_layer_vtable<SignLayer>()));
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-example-sign", "1.0.0", components)
