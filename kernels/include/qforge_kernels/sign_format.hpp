// Binary formats as data (DESIGN.md, "Packed formats are data"): one row per
// packed format whose named tensors describe a chain of sign planes with
// scale vectors (sign_chain.hpp), as affine_format.hpp has one row per
// affine grid format. The format is written down once, in its SDK header
// (sdk/include/qforge/formats/<name>.h); its row reads the metadata, checks
// the tensors and builds the SignChain the kernels run, and names the scale
// vectors (what tuning may change: the signs stay, so the format does).
//
// Adding a format: its SDK header; its row, `extern const SignFormat <name>`
// in kernels/src/formats/formats.hpp, defined in kernels/src/formats/<name>.cpp
// (see dbf_v1.cpp) and listed in kernels/CMakeLists.txt; its address in
// kSignFormats (kernels/src/sign_format.cpp).
//
// Errors are qforge::Error(INVALID_ARGUMENT) with messages that start with
// the format id.
#pragma once

#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/sign_chain.hpp>

#include <string>
#include <utility>
#include <vector>

namespace qforge::kernels {

struct SignFormat {
  const char* id;  // e.g. QFORGE_FORMAT_DBF_V1
  // The chain the (checked) metadata object and (untrusted) tensors describe.
  SignChain (*describe)(const nlohmann::json& metadata,
                        const std::vector<std::pair<std::string, TensorData>>& tensors);
  // The name of each scale vector of the chain, scales[0..L].
  std::vector<const char*> scale_names;
  // The name of each plane's tensor, planes[0..L−1]: uint8 [rows,
  // ceil(cols / 8)], MSB first, 1 = +1 (SignPlane::msb_rows).
  std::vector<const char*> plane_names;
};

// Every row, in the table's order.
const std::vector<const SignFormat*>& sign_formats();
// The row of format `id`, or nullptr.
const SignFormat* find_sign_format(const char* id);
// The ids of every row, NULL-terminated (an inference layer's `formats`).
const char* const* sign_format_ids();

// Parses `metadata_json` and describes the tensors with `format`.
SignChain describe_sign(const SignFormat& format, const std::string& metadata_json,
                        const std::vector<std::pair<std::string, TensorData>>& tensors);

}  // namespace qforge::kernels
