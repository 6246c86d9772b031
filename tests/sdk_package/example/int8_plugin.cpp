// An out-of-tree plugin: symmetric per-row int8 quantization, written with
// the SDK's C++ helper and no LibTorch. W ≈ s_r · q, q = round(W / s_r),
// s_r = max|W_r| / 127.
#include <qforge/cpp/plugin.hpp>

#include <algorithm>
#include <cmath>

namespace {

struct Int8 {
  static const char* const* formats() {
    static const char* const list[] = {"org.example.int8/1", nullptr};
    return list;
  }
  static void quantize(const qforge::Host&, const qforge_quantize_input& in,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    const float* w = qforge::checked_data<float>(*in.weight, 2, "weight");
    const int64_t rows = in.weight->shape[0], cols = in.weight->shape[1];
    const int64_t rs = in.weight->strides[0], cs = in.weight->strides[1];
    const double clip = params.get_float("clip");
    float *scales = nullptr, *deq = nullptr;
    int8_t* q = nullptr;
    DLManagedTensor* ts = qforge::new_tensor<float>({rows}, &scales);
    DLManagedTensor* tq = qforge::new_tensor<int8_t>({rows, cols}, &q);
    DLManagedTensor* td = qforge::new_tensor<float>({rows, cols}, &deq);
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0;
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(w[r * rs + c * cs]));
      float s = amax > 0 ? static_cast<float>(clip) * amax / 127.0f : 1.0f;
      scales[r] = s;
      for (int64_t c = 0; c < cols; ++c) {
        float v = std::nearbyint(w[r * rs + c * cs] / s);
        q[r * cols + c] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
        deq[r * cols + c] = s * q[r * cols + c];
      }
    }
    out.set_format("org.example.int8/1", "{\"bits\":8}");
    out.add_tensor("qweight", tq);
    out.add_tensor("scales", ts);
    out.set_dequantized(td);
  }
};

const char* const kFeatures[] = {"weight-only", "calibration-free", nullptr};

const qforge::ComponentList& components() {
  static const qforge_param_desc clip = qforge::param_range(
      QFORGE_PARAM_FLOAT, "clip", "fraction of max|W| mapped to 127", "1.0", 0.5, 1.0);
  static const qforge_param_desc* const params[] = {&clip};
  static const qforge::ComponentList list = {qforge::component(
      QFORGE_COMPONENT_QUANTIZER, "org.example.int8", "Per-row int8", "1.0.0", "Example Corp",
      "MIT", "Symmetric per-row int8 round-to-nearest (an out-of-tree example).", kFeatures,
      params, 1, qforge::quantizer_vtable<Int8>())};
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("example-int8", "1.0.0", components)
