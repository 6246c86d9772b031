// The format tables (affine_format.hpp, sign_format.hpp) for code that holds
// its tensors as at::Tensor: the table-driven inference layers, and the host,
// which converts any affine result to another file format without a plugin.
// Library qforge_kernels_torch.
#pragma once

#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/sign_format.hpp>

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace qforge::kernels {

// A format's tensors, made dense on the CPU, and the weight they describe
// (pointing into them).
struct AffineInput {
  std::vector<at::Tensor> tensors;
  AffineWeight weight;
};

// describe_affine() over at::Tensors. A tensor on another device is
// UNSUPPORTED, the rest of what is wrong INVALID_ARGUMENT (qforge::Error).
AffineInput describe_affine(const AffineFormat& format, const std::string& metadata_json,
                            const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// Tuning written back: scales and zero points (float32 [groups, out],
// contiguous) rounded in place to what the format stores, and copies of the
// format's `tensors` with those that hold them rewritten (the rest as they
// were). With `codes` (uint8 [out, in], each ≤ maxq), the codes too, into
// the tensor the format's codes are read from, in its bit layout.
// UNSUPPORTED for a row without round_params / write_params.
std::vector<std::pair<std::string, at::Tensor>> store_group_params(
    const AffineFormat& format, const std::string& metadata_json,
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, at::Tensor& scales,
    at::Tensor& zeros, const at::Tensor& codes = at::Tensor());

// describe_sign() over at::Tensors, with the same errors.
SignChain describe_sign(const SignFormat& format, const std::string& metadata_json,
                        const std::vector<std::pair<std::string, at::Tensor>>& tensors);

// A quantized weight in a neutral, unpacked form:
//   W[o, i] = scales[g, o] * (codes[o, i] - zeros[g, o]),  g = g_idx[i].
struct AffineTensors {
  int bits = 0;
  int64_t in_features = 0, out_features = 0;
  int64_t group_size = 0;  // as the metadata states it (in_features: one group per row)
  int64_t groups = 0;
  at::Tensor codes;   // int32 [out, in], each in [0, 2^bits)
  at::Tensor scales;  // float32 [groups, out]
  at::Tensor zeros;   // float32 [groups, out]
  at::Tensor g_idx;   // int32 [in]; i / group_size unless the format says otherwise
  at::Tensor bias;    // float32 [out]; undefined without a bias

  // g_idx[i] == i / group_size for every input (no act-order permutation).
  bool sequential_groups() const;
};

// The neutral form of a result in any format of the table (a quantizer's
// format id, metadata JSON and named tensors). Throws qforge::Error: an id
// not in the table is UNSUPPORTED.
AffineTensors unpack_affine(const std::string& format, const std::string& metadata_json,
                            const std::map<std::string, at::Tensor>& tensors);

}  // namespace qforge::kernels
