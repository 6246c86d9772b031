// Parameter schemas: checking, parsing and owned values (sdk/include/qforge/params.h).
#include "qforge_host/plugins/params.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"

namespace qforge::host {
namespace {

bool valid_name(const char* name) {
  if (name == nullptr || !(*name >= 'a' && *name <= 'z')) return false;
  for (const char* c = name; *c; ++c)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) return false;
  return std::strlen(name) <= 64;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  if (strip(text).empty()) return out;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    out.push_back(strip(text.substr(start, comma - start)));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string format_number(double v) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return fmt::format("{}", v);
}

// Parse failures throw std::invalid_argument with what the value should be.
bool parse_bool(const std::string& text) {
  std::string t = text;
  std::transform(t.begin(), t.end(), t.begin(), [](unsigned char c) { return std::tolower(c); });
  if (t == "true" || t == "1" || t == "yes" || t == "on") return true;
  if (t == "false" || t == "0" || t == "no" || t == "off") return false;
  throw std::invalid_argument("not a boolean");
}

int64_t parse_int(const std::string& text) {
  if (text.empty()) throw std::invalid_argument("empty");
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end == text.c_str() || *end != '\0')
    throw std::invalid_argument("not an integer");
  return v;
}

double parse_float(const std::string& text) {
  if (text.empty()) throw std::invalid_argument("empty");
  // from_chars: locale-independent ("0.5" whatever LC_NUMERIC says).
  double v = 0;
  const char* first = text.c_str() + (text[0] == '+' ? 1 : 0);
  const char* last = text.c_str() + text.size();
  auto [end, ec] = std::from_chars(first, last, v);
  if (ec != std::errc() || end != last || !std::isfinite(v))
    throw std::invalid_argument("not a finite number");
  return v;
}

bool in_range(const qforge_param_desc& p, double v) {
  if ((p.flags & QFORGE_PARAM_FLAG_HAS_MIN) && v < p.min) return false;
  if ((p.flags & QFORGE_PARAM_FLAG_HAS_MAX) && v > p.max) return false;
  return true;
}

void check_number(const qforge_param_desc& p, double v) {
  if (!in_range(p, v)) throw std::invalid_argument("out of range");
}

void check_choice(const qforge_param_desc& p, const std::string& v) {
  for (const char* const* c = p.choices; c && *c; ++c)
    if (v == *c) return;
  throw std::invalid_argument("not one of the choices");
}

// Parses `text` for `p` into `out`, storing owned data in the deques.
struct Storage {
  std::deque<std::string>& strings;
  std::deque<std::vector<int64_t>>& ints;
  std::deque<std::vector<double>>& floats;
  std::deque<std::vector<const char*>>& string_lists;
};

void parse_value(const qforge_param_desc& p, const std::string& text, qforge_param_value& out,
                 Storage& st) {
  switch (p.type) {
    case QFORGE_PARAM_BOOL:
      out.b = parse_bool(strip(text)) ? 1 : 0;
      break;
    case QFORGE_PARAM_INT:
      out.i = parse_int(strip(text));
      check_number(p, static_cast<double>(out.i));
      break;
    case QFORGE_PARAM_FLOAT:
      out.f = parse_float(strip(text));
      check_number(p, out.f);
      break;
    case QFORGE_PARAM_ENUM:
      check_choice(p, strip(text));
      st.strings.push_back(strip(text));
      out.s = st.strings.back().c_str();
      break;
    case QFORGE_PARAM_PATH:
      if (text.empty()) throw std::invalid_argument("empty path");
      st.strings.push_back(text);
      out.s = st.strings.back().c_str();
      break;
    case QFORGE_PARAM_STRING:
      st.strings.push_back(text);
      out.s = st.strings.back().c_str();
      break;
    case QFORGE_PARAM_INT_LIST: {
      std::vector<int64_t> v;
      for (const auto& e : split_list(text)) {
        v.push_back(parse_int(e));
        check_number(p, static_cast<double>(v.back()));
      }
      st.ints.push_back(std::move(v));
      out.ints = st.ints.back().data();
      out.count = st.ints.back().size();
      break;
    }
    case QFORGE_PARAM_FLOAT_LIST: {
      std::vector<double> v;
      for (const auto& e : split_list(text)) {
        v.push_back(parse_float(e));
        check_number(p, v.back());
      }
      st.floats.push_back(std::move(v));
      out.floats = st.floats.back().data();
      out.count = st.floats.back().size();
      break;
    }
    case QFORGE_PARAM_STRING_LIST: {
      std::vector<const char*> v;
      for (const auto& e : split_list(text)) {
        st.strings.push_back(e);
        v.push_back(st.strings.back().c_str());
      }
      st.string_lists.push_back(std::move(v));
      out.strings = st.string_lists.back().data();
      out.count = st.string_lists.back().size();
      break;
    }
    default:
      throw std::invalid_argument("unknown type");
  }
}

}  // namespace

const char* type_name(int32_t type) {
  switch (type) {
    case QFORGE_PARAM_BOOL: return "bool";
    case QFORGE_PARAM_INT: return "int";
    case QFORGE_PARAM_FLOAT: return "float";
    case QFORGE_PARAM_STRING: return "string";
    case QFORGE_PARAM_ENUM: return "enum";
    case QFORGE_PARAM_PATH: return "path";
    case QFORGE_PARAM_INT_LIST: return "int-list";
    case QFORGE_PARAM_FLOAT_LIST: return "float-list";
    case QFORGE_PARAM_STRING_LIST: return "string-list";
    default: return "unknown";
  }
}

std::string describe_accepted(const qforge_param_desc& p) {
  std::string range;
  bool lo = p.flags & QFORGE_PARAM_FLAG_HAS_MIN, hi = p.flags & QFORGE_PARAM_FLAG_HAS_MAX;
  bool integral = p.type == QFORGE_PARAM_INT || p.type == QFORGE_PARAM_INT_LIST;
  if (lo && hi)
    range = fmt::format(" in [{}, {}]", format_number(p.min), format_number(p.max));
  else if (lo)
    range = fmt::format(" >= {}", format_number(p.min));
  else if (hi)
    range = fmt::format(" <= {}", format_number(p.max));
  switch (p.type) {
    case QFORGE_PARAM_BOOL: return "true or false";
    case QFORGE_PARAM_INT: return "an integer" + range;
    case QFORGE_PARAM_FLOAT: return "a number" + range;
    case QFORGE_PARAM_STRING: return "any text";
    case QFORGE_PARAM_PATH: return "a file path";
    case QFORGE_PARAM_ENUM: {
      std::string s = "one of {";
      for (const char* const* c = p.choices; c && *c; ++c)
        s += (c == p.choices ? "" : ", ") + std::string(*c);
      return s + "}";
    }
    case QFORGE_PARAM_INT_LIST:
    case QFORGE_PARAM_FLOAT_LIST:
      return fmt::format("a comma-separated list of {}{}", integral ? "integers" : "numbers",
                         range.empty() ? "" : ", each" + range);
    case QFORGE_PARAM_STRING_LIST: return "a comma-separated list of strings";
    default: return "nothing (unknown type)";
  }
}

std::string check_schema(const qforge_param_desc* const* params, uint32_t count) {
  if (count > 0 && params == nullptr) return "parameter schema: param_count > 0 but params is NULL";
  if (count > 1024) return fmt::format("parameter schema: {} parameters is too many", count);
  std::set<std::string> seen;
  for (uint32_t k = 0; k < count; ++k) {
    const qforge_param_desc* p = params[k];
    if (p == nullptr) return fmt::format("parameter schema: entry {} is NULL", k);
    if (p->struct_size < sizeof(qforge_param_desc))
      return fmt::format("parameter schema: entry {} has struct_size {} < {}", k, p->struct_size,
                         sizeof(qforge_param_desc));
    if (!valid_name(p->name))
      return fmt::format("parameter schema: entry {} has an invalid name (want [a-z][a-z0-9_]*)", k);
    std::string where = fmt::format("parameter '{}'", p->name);
    if (!seen.insert(p->name).second) return where + " is declared twice";
    if (p->type < QFORGE_PARAM_BOOL || p->type > QFORGE_PARAM_STRING_LIST)
      return fmt::format("{} has unknown type {}", where, p->type);
    if (p->help == nullptr) return where + " has no help text";
    if (p->type == QFORGE_PARAM_ENUM && (p->choices == nullptr || p->choices[0] == nullptr))
      return where + " is an enum without choices";
    if ((p->flags & QFORGE_PARAM_FLAG_HAS_MIN) && (p->flags & QFORGE_PARAM_FLAG_HAS_MAX) &&
        !(p->min <= p->max))
      return fmt::format("{} has min {} > max {}", where, p->min, p->max);
    bool required = p->flags & QFORGE_PARAM_FLAG_REQUIRED;
    if (p->default_value == nullptr && !required)
      return where + " has no default and is not marked required";
    if (p->default_value != nullptr) {
      qforge_param_value v{};
      std::deque<std::string> s;
      std::deque<std::vector<int64_t>> i;
      std::deque<std::vector<double>> f;
      std::deque<std::vector<const char*>> l;
      Storage st{s, i, f, l};
      try {
        parse_value(*p, p->default_value, v, st);
      } catch (const std::invalid_argument&) {
        return fmt::format("{} has default '{}', which is not {}", where, p->default_value,
                           describe_accepted(*p));
      }
    }
  }
  return {};
}

std::pair<std::string, std::string> split_assignment(const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw UsageError(fmt::format("expected name=value, got '{}'", text));
  return {strip(text.substr(0, eq)), text.substr(eq + 1)};
}

ParamValues::ParamValues(const std::string& component_id, const qforge_param_desc* const* params,
                         uint32_t count, const std::map<std::string, std::string>& overrides) {
  std::set<std::string> known;
  for (uint32_t k = 0; k < count; ++k) known.insert(params[k]->name);
  for (const auto& [name, value] : overrides) {
    if (!known.count(name)) {
      std::string names;
      for (const auto& n : known) names += (names.empty() ? "" : ", ") + n;
      throw UsageError(fmt::format("{} has no parameter '{}' (its parameters: {})", component_id,
                                   name, names.empty() ? "none" : names));
    }
  }
  Storage st{strings_, ints_, floats_, string_lists_};
  values_.reserve(count);
  for (uint32_t k = 0; k < count; ++k) {
    const qforge_param_desc& p = *params[k];
    auto it = overrides.find(p.name);
    bool given = it != overrides.end();
    if (!given && p.default_value == nullptr)
      throw UsageError(fmt::format("{}: parameter '{}' is required: {}", component_id, p.name,
                                   describe_accepted(p)));
    std::string text = given ? it->second : p.default_value;
    qforge_param_value v{};
    v.struct_size = sizeof(qforge_param_value);
    v.type = p.type;
    strings_.push_back(p.name);
    v.name = strings_.back().c_str();
    try {
      parse_value(p, text, v, st);
    } catch (const std::invalid_argument&) {
      throw UsageError(fmt::format("{}: invalid value '{}' for parameter '{}' ({}): expected {}",
                                   component_id, text, p.name, type_name(p.type),
                                   describe_accepted(p)));
    }
    text_[p.name] = text;
    values_.push_back(v);
  }
  for (const auto& v : values_) pointers_.push_back(&v);
}

}  // namespace qforge::host
