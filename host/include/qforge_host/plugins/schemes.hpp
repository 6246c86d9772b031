// Named schemes of quantizers (qforge/ext/schemes.h): `qforge quantize
// --scheme NAME` and `qforge plugins show`. The host knows no scheme by name.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "qforge_host/plugins/registry.hpp"

namespace qforge::host {

// A named scheme a quantizer implements.
struct Scheme {
  std::string name;                           // e.g. "W8A8"
  std::map<std::string, std::string> params;  // its parameter values
  std::string description;
  bool is_default = false;
};

// The schemes `component` declares (none when it offers no table). Throws
// UsageError naming the component for a malformed table.
std::vector<Scheme> schemes_of(const Component& component);

// The quantizer a scheme selects: `method` when given (which must declare
// `scheme`), else the one that declares it as its default. Its parameters go
// to *params. UsageError listing the known schemes otherwise.
const Component& find_scheme(const Registry& registry, const std::string& scheme,
                             const std::string& method, std::map<std::string, std::string>* params);

}  // namespace qforge::host
