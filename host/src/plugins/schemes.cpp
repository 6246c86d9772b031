// Named schemes of quantizers (qforge/ext/schemes.h); see schemes.hpp.
#include "qforge_host/plugins/schemes.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <qforge/ext/schemes.h>

#include <algorithm>

#include "qforge_host/base/errors.hpp"

namespace qforge::host {
namespace {
bool nonempty(const char* s) { return s != nullptr && *s != '\0'; }
}  // namespace

std::vector<Scheme> schemes_of(const Component& c) {
  std::vector<Scheme> out;
  if (c.quantizer() == nullptr || c.desc->get_extension == nullptr) return out;
  const auto* t = static_cast<const qforge_quantizer_schemes*>(
      c.desc->get_extension(QFORGE_EXT_SCHEMES, QFORGE_EXT_SCHEMES_REVISION));
  if (t == nullptr) return out;
  auto bad = [&](const std::string& why) {
    return UsageError(fmt::format("{}: malformed scheme table ({})", c.desc->id, why));
  };
  if (t->struct_size < sizeof(qforge_quantizer_schemes) || t->count > 256 ||
      (t->count > 0 && t->schemes == nullptr))
    throw bad("size or count");
  for (uint32_t k = 0; k < t->count; ++k) {
    const qforge_scheme_desc* d = t->schemes[k];
    if (d == nullptr || d->struct_size < sizeof(qforge_scheme_desc) || !nonempty(d->name) ||
        d->params == nullptr)
      throw bad(fmt::format("entry {}", k));
    Scheme s{d->name, {}, d->description ? d->description : "", d->is_default != 0};
    std::string list = d->params;
    for (size_t pos = 0; pos < list.size();) {
      size_t end = list.find(';', pos);
      if (end == std::string::npos) end = list.size();
      const std::string item = list.substr(pos, end - pos);
      const size_t eq = item.find('=');
      if (eq == std::string::npos || eq == 0) throw bad(fmt::format("'{}' in {}", item, s.name));
      s.params[item.substr(0, eq)] = item.substr(eq + 1);
      pos = end + 1;
    }
    out.push_back(std::move(s));
  }
  return out;
}

const Component& find_scheme(const Registry& registry, const std::string& scheme,
                             const std::string& method, std::map<std::string, std::string>* params) {
  std::vector<std::string> known;
  const Component* fallback = nullptr;
  for (const Component& c : registry.components()) {
    if (!method.empty() && method != c.desc->id) continue;
    for (const Scheme& s : schemes_of(c)) {
      known.push_back(s.name);
      if (s.name != scheme || (method.empty() && !s.is_default)) continue;
      if (fallback != nullptr)
        throw UsageError(fmt::format("--scheme {}: both {} and {} claim to be its default; "
                                     "choose one with --method", scheme, fallback->desc->id,
                                     c.desc->id));
      fallback = &c;
      *params = s.params;
    }
  }
  if (fallback != nullptr) return *fallback;
  std::sort(known.begin(), known.end());
  known.erase(std::unique(known.begin(), known.end()), known.end());
  throw UsageError(fmt::format(
      "--scheme {}: {} (schemes: {})", scheme,
      method.empty() ? "no loaded quantizer implements it by default"
                     : fmt::format("{} does not implement it", method),
      known.empty() ? std::string("none") : fmt::format("{}", fmt::join(known, ", "))));
}

}  // namespace qforge::host
