// The table of binary (sign-plane) formats (sign_format.hpp).
#include <qforge/cpp/plugin.hpp>
#include <qforge_kernels/sign_format.hpp>

#include <nlohmann/json.hpp>

#include <cstring>
#include <stdexcept>

#include "formats/formats.hpp"

namespace qforge::kernels {

// The table. A new format is one more row here (see sign_format.hpp).
namespace {
const SignFormat* const kSignFormats[] = {&formats::dbf_v1};
}  // namespace

const std::vector<const SignFormat*>& sign_formats() {
  static const std::vector<const SignFormat*> rows(std::begin(kSignFormats), std::end(kSignFormats));
  return rows;
}

const SignFormat* find_sign_format(const char* id) {
  if (id == nullptr) return nullptr;
  for (const SignFormat* f : sign_formats())
    if (std::strcmp(f->id, id) == 0) return f;
  return nullptr;
}

const char* const* sign_format_ids() {
  static const std::vector<const char*> ids = [] {
    std::vector<const char*> v;
    for (const SignFormat* f : sign_formats()) v.push_back(f->id);
    v.push_back(nullptr);
    return v;
  }();
  return ids.data();
}

SignChain describe_sign(const SignFormat& format, const std::string& metadata_json,
                        const std::vector<std::pair<std::string, TensorData>>& tensors) {
  const nlohmann::json m = parse_metadata(format.id, metadata_json);
  try {
    return format.describe(m, tensors);
  } catch (const std::invalid_argument& e) {  // from SignChain / SignPlane
    qforge::invalid_argument(std::string(format.id) + ": " + e.what());
  }
}

}  // namespace qforge::kernels
