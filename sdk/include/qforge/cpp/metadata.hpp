// Optional header-only helper: a packed format's metadata, a JSON object
// (quantizer.h set_format), written and read with checks, on nlohmann_json.
//
//   out.set_format(kFormat, qforge::Metadata{{"group_size", g}, {"in_features", n}});
//   qforge::Metadata m = qforge::Metadata::parse(metadata_text);   // in a layer's create
//   int64_t g = m.get_int("group_size");     // INVALID_ARGUMENT naming the key if absent
#ifndef QFORGE_CPP_METADATA_HPP
#define QFORGE_CPP_METADATA_HPP

#include <nlohmann/json.hpp>
#include <qforge/cpp/plugin.hpp>

#include <cstdint>
#include <string>

namespace qforge {

class Metadata : public nlohmann::json {
 public:
  using nlohmann::json::json;
  Metadata(nlohmann::json j) : nlohmann::json(std::move(j)) {}  // NOLINT: implicit on purpose

  // INVALID_ARGUMENT unless `text` is a JSON object.
  static Metadata parse(const std::string& text) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) invalid_argument("format metadata is not a JSON object: " + text);
    return Metadata(std::move(j));
  }
  int64_t get_int(const char* key) const { return field(key, &nlohmann::json::is_number_integer, "an integer").get<int64_t>(); }
  double get_float(const char* key) const { return field(key, &nlohmann::json::is_number, "a number").get<double>(); }
  bool get_bool(const char* key) const { return field(key, &nlohmann::json::is_boolean, "true or false").get<bool>(); }
  std::string get_string(const char* key) const { return field(key, &nlohmann::json::is_string, "a string").get<std::string>(); }

 private:
  const nlohmann::json& field(const char* key, bool (nlohmann::json::*is)() const noexcept,
                              const char* what) const {
    auto it = find(key);
    if (it == end()) invalid_argument(std::string("format metadata has no '") + key + "'");
    if (!((*it).*is)()) invalid_argument(std::string("format metadata '") + key + "' must be " + what);
    return *it;
  }
};

}  // namespace qforge

#endif  // QFORGE_CPP_METADATA_HPP
