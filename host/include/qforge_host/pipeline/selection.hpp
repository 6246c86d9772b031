// Which layers to quantize, and per-layer parameter overrides.
//
// The selection fields and their order follow OneComp's Quantizer
// (include_layer_names, include_layer_keywords, exclude_layer_names,
// exclude_layer_keywords, num_layers, target_layer_types; docs
// user-guide/configuration.md "Layer Selection Priority"). Differences, all on
// the side of failing loudly instead of quietly doing something else:
//  - OneComp tells "not given" (None) from "empty"; an empty include list there
//    selects nothing. Here an empty list means "no filter".
//  - OneComp ignores an include name that is not a layer; here it is an error
//    (a typo would otherwise quantize nothing or the wrong layers).
//  - OneComp asserts when fewer than num_layers layers are left; here that is
//    a UsageError, and an empty result is one too.
//  - Types are names ("linear"), not Python classes.
//
// No LibTorch here.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace qforge::host {

struct LayerSelection {
  // Layer types to consider; only "linear" exists today (others are refused
  // with a message listing the known types).
  std::vector<std::string> target_types = {"linear"};
  std::vector<std::string> include_names;     // exact names; when non-empty, only these (after the type filter)
  std::vector<std::string> include_keywords;  // substrings; when non-empty, a name must contain one
  std::vector<std::string> exclude_names = {"lm_head"};  // exact names removed
  std::vector<std::string> exclude_keywords;  // substrings removed
  int64_t num_layers = -1;                    // keep only the first N (model order) after the filters; -1 = all
};

// The known layer types ({"linear"}).
const std::vector<std::string>& known_layer_types();

// Applies, in OneComp's priority order: target types, include names, include
// keywords, exclude names, exclude keywords, num_layers. `candidates` are
// (name, type) in model order; the result keeps that order. Throws UsageError
// for an unknown type, an include name that is not a candidate (listing a few
// that are), num_layers that is neither -1 nor in [1, layers left], or when
// nothing is left (saying which step removed the last layers).
std::vector<std::string> select_layers(const std::vector<std::pair<std::string, std::string>>& candidates,
                                       const LayerSelection& sel);

// Parameters for the layers whose name matches `pattern`.
struct LayerOverride {
  std::string pattern;
  std::map<std::string, std::string> params;
};

// `pattern` is a glob over the whole name ('*' any run of characters, dots
// included; '?' exactly one) when it contains '*' or '?', else a substring
// ("mlp.down_proj" matches "model.layers.3.mlp.down_proj").
bool override_matches(const std::string& layer, const std::string& pattern);

// The parameters every matching override sets; a later override wins over an
// earlier one for the same parameter.
std::map<std::string, std::string> overrides_for(const std::string& layer,
                                                 const std::vector<LayerOverride>& overrides);

// Parses the text of "--override PATTERN:name=value[,name=value...]", split at
// the first ':' (layer names hold no ':'; values may). Spaces around names and
// values are trimmed. Throws UsageError quoting the text for a missing ':',
// an empty pattern, no parameters, an item without '=', an empty name or
// value, or a name given twice.
LayerOverride parse_override(const std::string& text);

}  // namespace qforge::host
