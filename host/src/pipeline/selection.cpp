// Layer selection and per-layer overrides (qforge_host/pipeline/selection.hpp).
#include "qforge_host/pipeline/selection.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/text.hpp"

namespace qforge::host {
namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

bool contains_any(const std::string& name, const std::vector<std::string>& keywords) {
  for (const auto& k : keywords)
    if (name.find(k) != std::string::npos) return true;
  return false;
}

std::string joined(const std::vector<std::string>& v, size_t max) {
  std::string out;
  for (size_t i = 0; i < v.size() && i < max; ++i) out += (i ? ", " : "") + v[i];
  if (v.size() > max) out += fmt::format(", ... ({} in all)", v.size());
  return out;
}

// Iterative glob with backtracking to the last '*': linear in practice.
bool glob_match(const std::string& s, const std::string& p) {
  size_t si = 0, pi = 0, star = std::string::npos, mark = 0;
  while (si < s.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == s[si])) {
      ++si, ++pi;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (star != std::string::npos) {
      pi = star + 1;
      si = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

}  // namespace

const std::vector<std::string>& known_layer_types() {
  static const std::vector<std::string> types = {"linear"};
  return types;
}

std::vector<std::string> select_layers(const std::vector<std::pair<std::string, std::string>>& candidates,
                                       const LayerSelection& sel) {
  if (sel.target_types.empty())
    throw UsageError(fmt::format("layer selection: no target layer types (known: {})",
                                 joined(known_layer_types(), 100)));
  for (const auto& t : sel.target_types)
    if (!contains(known_layer_types(), t))
      throw UsageError(fmt::format("layer selection: unknown layer type '{}' (known: {})", t,
                                   joined(known_layer_types(), 100)));
  if (sel.num_layers == 0 || sel.num_layers < -1)
    throw UsageError(fmt::format("layer selection: num_layers must be -1 (all) or at least 1, not {}",
                                 sel.num_layers));

  // Steps, with how many layers each leaves (for the "nothing left" message).
  std::vector<std::string> kept;
  for (const auto& [name, type] : candidates)
    if (contains(sel.target_types, type)) kept.push_back(name);
  std::vector<std::string> steps = {
      fmt::format("{} of type {}", kept.size(), joined(sel.target_types, 100))};
  auto filter = [&](auto keep, const std::string& what) {
    std::vector<std::string> next;
    for (const auto& name : kept)
      if (keep(name)) next.push_back(name);
    kept.swap(next);
    steps.push_back(fmt::format("{} after {}", kept.size(), what));
  };

  if (!sel.include_names.empty()) {
    std::vector<std::string> of_type = kept;
    for (const auto& want : sel.include_names) {
      if (contains(of_type, want)) continue;
      auto it = std::find_if(candidates.begin(), candidates.end(),
                             [&](const auto& c) { return c.first == want; });
      if (it != candidates.end())
        throw UsageError(fmt::format(
            "layer selection: include name '{}' is a layer of type '{}', not of the target types ({})",
            want, it->second, joined(sel.target_types, 100)));
      throw UsageError(fmt::format("layer selection: include name '{}' is not a layer of the model{}",
                                   want,
                                   of_type.empty() ? std::string(" (it has no layer of the target types)")
                                                   : "; layers are e.g. " + joined(of_type, 4)));
    }
    filter([&](const std::string& n) { return contains(sel.include_names, n); }, "include_names");
  }
  if (!sel.include_keywords.empty())
    filter([&](const std::string& n) { return contains_any(n, sel.include_keywords); },
           "include_keywords");
  if (!sel.exclude_names.empty())
    filter([&](const std::string& n) { return !contains(sel.exclude_names, n); }, "exclude_names");
  if (!sel.exclude_keywords.empty())
    filter([&](const std::string& n) { return !contains_any(n, sel.exclude_keywords); },
           "exclude_keywords");

  if (kept.empty())
    throw UsageError(fmt::format("layer selection: no layer is left ({} candidates; {})",
                                 candidates.size(), joined(steps, 100)));
  if (sel.num_layers > 0) {
    if (sel.num_layers > static_cast<int64_t>(kept.size()))
      throw UsageError(fmt::format(
          "layer selection: num_layers is {} but only {} layers are left after the filters ({})",
          sel.num_layers, kept.size(), joined(steps, 100)));
    kept.resize(static_cast<size_t>(sel.num_layers));
  }
  return kept;
}

bool override_matches(const std::string& layer, const std::string& pattern) {
  if (pattern.find_first_of("*?") == std::string::npos) return layer.find(pattern) != std::string::npos;
  return glob_match(layer, pattern);
}

std::map<std::string, std::string> overrides_for(const std::string& layer,
                                                 const std::vector<LayerOverride>& overrides) {
  std::map<std::string, std::string> out;
  for (const auto& o : overrides)
    if (override_matches(layer, o.pattern))
      for (const auto& [k, v] : o.params) out[k] = v;
  return out;
}

LayerOverride parse_override(const std::string& text) {
  auto fail = [&](const std::string& what) {
    throw UsageError(fmt::format(
        "override '{}': {} (expected PATTERN:name=value[,name=value...], e.g. "
        "'*.mlp.down_proj:bits=8,group_size=64')",
        text, what));
  };
  size_t colon = text.find(':');
  if (colon == std::string::npos) fail("no ':' after the layer pattern");
  LayerOverride o;
  o.pattern = strip(text.substr(0, colon));
  if (o.pattern.empty()) fail("the layer pattern is empty");
  std::string rest = text.substr(colon + 1);
  if (strip(rest).empty()) fail("no parameters");
  size_t pos = 0;
  for (;;) {
    size_t comma = rest.find(',', pos);
    std::string item = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t eq = item.find('=');
    if (eq == std::string::npos) fail(fmt::format("'{}' is not name=value", strip(item)));
    std::string name = strip(item.substr(0, eq)), value = strip(item.substr(eq + 1));
    if (name.empty()) fail(fmt::format("'{}' has no parameter name", strip(item)));
    if (value.empty()) fail(fmt::format("parameter '{}' has no value", name));
    if (!o.params.emplace(name, value).second) fail(fmt::format("parameter '{}' is given twice", name));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return o;
}

}  // namespace qforge::host
