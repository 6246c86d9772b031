// qforge-affine: one inference layer for every affine grid format,
//   W[o, i] = scale[g, o] · (q[o, i] − zero[g, o]),  g = the group of input i,
// in the table of kernels/include/qforge_kernels/affine_format.hpp (its
// `formats` are the table's ids: org.qforge.rtn/1, org.qforge.gptq/1, ...).
//
// A layer reads its format's tensors through the format's row, repacks them
// once into a PackedMatrix (bits per weight plus the per-group scales and zero
// points, no float32 copy of W) and runs it through torch_layer.hpp: up to
// kGemvMaxRows rows of x the packed SIMD kernels (AVX-512 / AVX2 / portable,
// picked at run time); larger batches and backward_input dequantize W block
// by block into one reused buffer and multiply with a LibTorch GEMM.
// dequantize gives W bit for bit as the format decodes it.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/torch_layer.hpp>

#include <ATen/ATen.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

constexpr const char* kId = "org.qforge.affine.layer";

class AffineLayer : public qforge::kernels::aten::MatrixLayer {
 public:
  static const char* const* formats() { return qforge::kernels::affine_format_ids(); }

  AffineLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
              const std::vector<const qforge_named_tensor*>& tensors) {
    const qforge::kernels::AffineFormat* row = qforge::kernels::find_affine_format(format.c_str());
    if (row == nullptr)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                          std::string(kId) + " does not consume format '" + format + "'");
    std::vector<std::pair<std::string, at::Tensor>> named;
    for (const qforge_named_tensor* nt : tensors) {
      if (nt == nullptr || nt->name == nullptr || nt->tensor == nullptr)
        qforge::invalid_argument(format + ": a tensor without name or data");
      if (nt->tensor->device.device_type != kDLCPU)
        throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                            format + " tensor '" + nt->name + "' must be on the CPU");
      named.emplace_back(nt->name, qforge::borrow(*nt->tensor));
    }
    // The tensors are borrowed for this call: the matrix is repacked, the bias copied.
    const qforge::kernels::AffineInput input =
        qforge::kernels::describe_affine(*row, metadata, named);
    in_ = input.weight.shape.in_features;
    out_ = input.weight.shape.out_features;
    if (!input.weight.bias.empty()) bias_ = at::tensor(input.weight.bias, at::kFloat);
    try {
      matrix_ = qforge::kernels::aten::pack(input.weight.weight);
    } catch (const std::invalid_argument& e) {
      qforge::invalid_argument(format + ": " + e.what());
    }
  }
};

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const features[] = {"cpu", "packed-kernels", nullptr};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_INFERENCE_LAYER, kId, "Affine packed layer", "1.0.0", "qforge", "MIT",
        "Runs every affine grid format (W = s·(q − z) with per-group scales and zero points "
        "and any g_idx: org.qforge.rtn/1, org.qforge.gptq/1) on the CPU from its bit-packed "
        "codes: packed AVX-512/AVX2 kernels for small batches, dequantize + LibTorch GEMM for "
        "large ones.",
        features, nullptr, 0, qforge::inference_layer_vtable<AffineLayer>()));
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-affine", "1.0.0", components)
