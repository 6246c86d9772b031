// Parameter schemas: validation of a component's schema, parsing of textual
// values (`--set name=value`, defaults), and owned qforge_param_value arrays.
#pragma once

#include <qforge/params.h>

#include <deque>
#include <map>
#include <string>
#include <vector>

namespace qforge::host {

// Returns "" when the schema is well-formed, else a one-line reason
// (bad name, duplicate, unknown type, enum without choices, min > max,
// a default that does not parse or is out of range, ...).
std::string check_schema(const qforge_param_desc* const* params, uint32_t count);

// "an integer in [2, 8]", "one of {a, b}", "true or false", ...
std::string describe_accepted(const qforge_param_desc& p);
// "int", "float", "enum", ...
const char* type_name(int32_t type);

// Splits "name=value"; throws UsageError when there is no '='.
std::pair<std::string, std::string> split_assignment(const std::string& text);

// The validated values of one component's parameters, in schema order,
// owning all the storage their qforge_param_value entries point into.
class ParamValues {
 public:
  // Defaults overridden by `overrides` (name -> text). Throws UsageError naming
  // the parameter and what it accepts, for an unknown name, a bad value or a
  // missing required parameter. `component_id` is used in messages.
  ParamValues(const std::string& component_id, const qforge_param_desc* const* params,
              uint32_t count,
              const std::map<std::string, std::string>& overrides);
  ParamValues(const ParamValues&) = delete;
  ParamValues& operator=(const ParamValues&) = delete;

  const qforge_param_value* const* data() const { return pointers_.data(); }
  uint32_t size() const { return static_cast<uint32_t>(values_.size()); }
  // The textual value of each parameter (after defaults), for reports.
  const std::map<std::string, std::string>& text() const { return text_; }

 private:
  std::vector<qforge_param_value> values_;
  std::vector<const qforge_param_value*> pointers_;
  std::deque<std::string> strings_;
  std::deque<std::vector<int64_t>> ints_;
  std::deque<std::vector<double>> floats_;
  std::deque<std::vector<const char*>> string_lists_;
  std::map<std::string, std::string> text_;
};

}  // namespace qforge::host
