// The format tables over at::Tensors (affine_aten.hpp).
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/affine_aten.hpp>
#include <qforge_kernels/bitpack.hpp>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

namespace qforge::kernels {

namespace {

// Dense CPU copies of `tensors` (kept in `keep`) as TensorData.
std::vector<std::pair<std::string, TensorData>> tensor_data(
    const char* format, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    std::vector<at::Tensor>& keep) {
  std::vector<std::pair<std::string, TensorData>> data;
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) invalid_argument(std::string(format) + ": tensor '" + name + "' is undefined");
    if (!t.device().is_cpu())
      throw Error(QFORGE_STATUS_UNSUPPORTED,
                  std::string(format) + " tensor '" + name + "' must be on the CPU");
    const at::Tensor& dense = keep.emplace_back(t.contiguous());
    data.emplace_back(
        name, TensorData{dl_dtype(dense.scalar_type()), dense.sizes().vec(), dense.data_ptr()});
  }
  return data;
}

// Codes (uint8 [out, in]) written into the tensor the format reads them from:
// the words the described weight points at, which must lie in one of the
// copies (`keep`); UNSUPPORTED for a format that converts its codes.
void write_codes(const AffineFormat& format, const AffineShape& shape,
                 const std::vector<const TensorData*>& by_spec, const std::vector<at::Tensor>& keep,
                 const at::Tensor& codes) {
  const std::string id = format.id;
  const int64_t out = shape.out_features, in = shape.in_features;
  if (codes.scalar_type() != at::kByte || !codes.is_contiguous() || codes.dim() != 2 ||
      codes.size(0) != out || codes.size(1) != in)
    invalid_argument(id + ": tuned codes must be uint8 [out, in]");
  if (codes.max().item<int64_t>() > (int64_t{1} << shape.bits) - 1)
    invalid_argument(id + ": a tuned code is above the grid's maximum");
  const AffineWeight w = format.describe(shape, by_spec);
  const QuantizedWeight& q = w.weight;
  const int64_t words = words_for(in, q.bits);
  const auto* first = reinterpret_cast<const char*>(q.codes);
  bool inside = false;
  for (const at::Tensor& t : keep) {
    const auto* begin = static_cast<const char*>(t.data_ptr());
    const int64_t last = (words - 1) * q.code_word_stride + (out - 1) * q.code_out_stride;
    inside = inside || (first >= begin && first + (last + 1) * 4 <= begin + t.nbytes());
  }
  if (!inside)
    throw Error(QFORGE_STATUS_UNSUPPORTED, id + " converts its codes when it reads them: tuned "
                                                "codes cannot be written back");
  auto* dst = const_cast<uint32_t*>(q.codes);
  std::vector<uint32_t> row(static_cast<size_t>(words));
  const uint8_t* c = codes.data_ptr<uint8_t>();
  for (int64_t o = 0; o < out; ++o) {
    pack_bits(c + o * in, in, q.bits, row.data());
    for (int64_t k = 0; k < words; ++k) dst[k * q.code_word_stride + o * q.code_out_stride] = row[k];
  }
}

}  // namespace

AffineInput describe_affine(const AffineFormat& format, const std::string& metadata_json,
                            const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  AffineInput in;
  in.weight = describe_affine(format, metadata_json, tensor_data(format.id, tensors, in.tensors));
  return in;
}

SignChain describe_sign(const SignFormat& format, const std::string& metadata_json,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors) {
  std::vector<at::Tensor> keep;  // the chain copies what it needs
  return describe_sign(format, metadata_json, tensor_data(format.id, tensors, keep));
}

std::vector<std::pair<std::string, at::Tensor>> store_group_params(
    const AffineFormat& format, const std::string& metadata_json,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, at::Tensor& scales,
    at::Tensor& zeros, const at::Tensor& codes) {
  const std::string id = format.id;
  if (format.round_params == nullptr || format.write_params == nullptr)
    throw Error(QFORGE_STATUS_UNSUPPORTED, id + " cannot store tuned scales and zero points");
  const AffineShape shape = format.read_metadata(parse_metadata(id, metadata_json));
  if (!scales.is_contiguous() || !zeros.is_contiguous() || scales.scalar_type() != at::kFloat ||
      zeros.scalar_type() != at::kFloat || scales.numel() != shape.groups * shape.out_features ||
      zeros.numel() != scales.numel())
    invalid_argument(id + ": tuned scales and zero points must be float32 [groups, out]");
  std::vector<std::pair<std::string, at::Tensor>> copies;
  for (const auto& [name, t] : tensors) copies.emplace_back(name, t.contiguous().clone());
  std::vector<at::Tensor> keep;  // the copies themselves: written through TensorData
  const auto data = tensor_data(format.id, copies, keep);
  std::vector<TensorCheck> checks;
  for (const TensorSpec& spec : format.tensors)
    checks.push_back({spec.name, spec.dtypes, spec.shape(shape), spec.required, ""});
  const std::vector<const TensorData*> by_spec = match_tensors(id, checks, data);
  format.round_params(shape, by_spec, scales.data_ptr<float>(), zeros.data_ptr<float>());
  format.write_params(shape, scales.data_ptr<float>(), zeros.data_ptr<float>(), by_spec);
  if (codes.defined()) write_codes(format, shape, by_spec, keep, codes);
  return copies;
}

bool AffineTensors::sequential_groups() const {
  return at::equal(g_idx, at::arange(in_features, at::kInt).div_(group_size, "floor"));
}

AffineTensors unpack_affine(const std::string& format, const std::string& metadata_json,
                            const std::map<std::string, at::Tensor>& tensors) {
  const AffineFormat* f = find_affine_format(format.c_str());
  if (f == nullptr)
    throw Error(QFORGE_STATUS_UNSUPPORTED, "'" + format + "' is not an affine grid format");
  if (f->transformed)
    throw Error(QFORGE_STATUS_UNSUPPORTED,
                "'" + format + "' holds its grid between input and output transforms, which a "
                "plain affine grid format cannot store");
  const AffineInput input = describe_affine(
      *f, metadata_json,
      std::vector<std::pair<std::string, at::Tensor>>(tensors.begin(), tensors.end()));
  const QuantizedWeight& w = input.weight.weight;
  const AffineShape& s = input.weight.shape;
  AffineTensors a;
  a.bits = s.bits;
  a.in_features = s.in_features;
  a.out_features = s.out_features;
  a.group_size = s.group_size;
  a.groups = s.groups;

  a.codes = at::empty({s.out_features, s.in_features}, at::kInt);
  int32_t* codes = a.codes.data_ptr<int32_t>();
  at::parallel_for(0, s.out_features, 1, [&](int64_t o0, int64_t o1) {
    std::vector<uint8_t> q(static_cast<size_t>(s.in_features));
    for (int64_t o = o0; o < o1; ++o) {
      read_codes(w, o, q.data());
      std::copy(q.begin(), q.end(), codes + o * s.in_features);
    }
  });
  a.scales = at::empty({s.groups, s.out_features}, at::kFloat);
  a.zeros = at::empty({s.groups, s.out_features}, at::kFloat);
  float* scales = a.scales.data_ptr<float>();
  float* zeros = a.zeros.data_ptr<float>();
  for (int64_t g = 0; g < s.groups; ++g)
    for (int64_t o = 0; o < s.out_features; ++o) {
      scales[g * s.out_features + o] = w.scales[g * w.scale_group_stride + o * w.scale_out_stride];
      zeros[g * s.out_features + o] = w.zeros[g * w.zero_group_stride + o * w.zero_out_stride];
    }
  a.g_idx = at::empty({s.in_features}, at::kInt);
  int32_t* g_idx = a.g_idx.data_ptr<int32_t>();
  for (int64_t i = 0; i < s.in_features; ++i)
    g_idx[i] = w.g_idx != nullptr ? w.g_idx[i] : static_cast<int32_t>(i / w.group_size);
  if (!input.weight.bias.empty()) a.bias = at::tensor(input.weight.bias, at::kFloat);
  return a;
}

}  // namespace qforge::kernels
