// `qforge plugins [--json]` and `qforge plugins show ID [--json]`.
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/schemes.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace qforge::cli {
namespace {

std::string or_dash(const char* s) { return s && *s ? s : "-"; }

std::vector<std::string> features(const qforge_component_desc& d) {
  std::vector<std::string> out;
  for (const char* const* f = d.features; f && *f; ++f) out.push_back(*f);
  return out;
}

std::vector<std::string> formats(const host::Component& c) {
  std::vector<std::string> out;
  const char* const* list = nullptr;
  if (auto* q = c.quantizer()) list = q->output_formats;
  if (auto* l = c.inference_layer()) list = l->formats;
  for (; list && *list; ++list) out.push_back(*list);
  return out;
}

json param_json(const qforge_param_desc& p) {
  json j = {{"name", p.name},
            {"type", host::type_name(p.type)},
            {"help", p.help},
            {"accepts", host::describe_accepted(p)},
            {"required", (p.flags & QFORGE_PARAM_FLAG_REQUIRED) != 0}};
  j["default"] = p.default_value ? json(p.default_value) : json(nullptr);
  if (p.flags & QFORGE_PARAM_FLAG_HAS_MIN) j["min"] = p.min;
  if (p.flags & QFORGE_PARAM_FLAG_HAS_MAX) j["max"] = p.max;
  if (p.type == QFORGE_PARAM_ENUM) {
    j["choices"] = json::array();
    for (const char* const* c = p.choices; c && *c; ++c) j["choices"].push_back(*c);
  }
  return j;
}

json component_json(const host::Component& c, bool with_params) {
  const qforge_component_desc& d = *c.desc;
  json j = {{"id", d.id},
            {"kind", host::kind_name(d.kind)},
            {"name", d.name},
            {"version", d.version},
            {"vendor", d.vendor},
            {"license", d.license},
            {"description", d.description ? d.description : ""},
            {"features", features(d)},
            {"formats", formats(c)},
            {"library", c.library},
            {"plugin", c.plugin_name},
            {"plugin_version", c.plugin_version}};
  if (with_params) {
    j["parameters"] = json::array();
    for (uint32_t k = 0; k < d.param_count; ++k) j["parameters"].push_back(param_json(*d.params[k]));
    j["schemes"] = json::array();
    for (const auto& s : host::schemes_of(c))
      j["schemes"].push_back({{"name", s.name}, {"params", s.params},
                              {"description", s.description}, {"default", s.is_default}});
  }
  return j;
}

int list(host::Registry& registry, bool as_json) {
  if (as_json) {
    json out = {{"components", json::array()}, {"refused", json::array()},
                {"directories", registry.directories()}};
    for (const auto& c : registry.components()) out["components"].push_back(component_json(c, true));
    for (const auto& r : registry.refusals())
      out["refused"].push_back({{"library", r.library}, {"reason", r.reason}});
    std::cout << out.dump(2) << "\n";
    return host::kExitOk;
  }
  // Columns as wide as their longest entry (a long vendor name included).
  size_t wid = 2, wkind = 4, wversion = 7, wvendor = 6;
  for (const auto& c : registry.components()) {
    wid = std::max(wid, std::strlen(c.desc->id));
    wkind = std::max(wkind, std::strlen(host::kind_name(c.desc->kind)));
    wversion = std::max(wversion, std::strlen(c.desc->version));
    wvendor = std::max(wvendor, std::strlen(c.desc->vendor));
  }
  fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", "ID", wid, "KIND", wkind, "VERSION", wversion,
             "VENDOR", wvendor, "PARAMETERS");
  for (const auto& c : registry.components()) {
    std::string params;
    for (uint32_t k = 0; k < c.desc->param_count; ++k)
      params += (k ? " " : "") + fmt::format("{}={}", c.desc->params[k]->name,
                                             or_dash(c.desc->params[k]->default_value));
    fmt::print("{:<{}}  {:<{}}  {:<{}}  {:<{}}  {}\n", c.desc->id, wid,
               host::kind_name(c.desc->kind), wkind, c.desc->version, wversion, c.desc->vendor,
               wvendor, params.empty() ? "-" : params);
  }
  if (registry.components().empty())
    fmt::print("(no plugins found in: {})\n", fmt::join(registry.directories(), ", "));
  for (const auto& r : registry.refusals())
    fmt::print(stderr, "refused {}: {}\n", r.library, r.reason);
  return host::kExitOk;
}

int show(host::Registry& registry, const std::string& id, bool as_json) {
  const host::Component* c = registry.find(id);
  if (c == nullptr) {
    std::string ids;
    for (const auto& k : registry.components()) ids += (ids.empty() ? "" : ", ") + std::string(k.desc->id);
    throw host::UsageError(fmt::format("no component with id '{}' (loaded: {})", id,
                                       ids.empty() ? "none" : ids));
  }
  if (as_json) {
    std::cout << component_json(*c, true).dump(2) << "\n";
    return host::kExitOk;
  }
  const qforge_component_desc& d = *c->desc;
  fmt::print("{} ({}) {}\n", d.id, host::kind_name(d.kind), d.version);
  fmt::print("  name:     {}\n  vendor:   {}\n  license:  {}\n", d.name, d.vendor, d.license);
  fmt::print("  library:  {} ({} {})\n", c->library, c->plugin_name, c->plugin_version);
  if (!features(d).empty()) fmt::print("  features: {}\n", fmt::join(features(d), ", "));
  if (!formats(*c).empty()) fmt::print("  formats:  {}\n", fmt::join(formats(*c), ", "));
  if (d.description) fmt::print("\n  {}\n", d.description);
  const std::vector<host::Scheme> schemes = host::schemes_of(*c);
  if (!schemes.empty()) {
    fmt::print("\nSchemes (quantize --scheme NAME; * = the default implementation):\n");
    for (const auto& s : schemes) {
      std::vector<std::string> kv;
      for (const auto& [k, v] : s.params) kv.push_back(k + "=" + v);
      fmt::print("  {:<12}{} {}  ({})\n", s.name, s.is_default ? "*" : " ", s.description,
                 fmt::join(kv, " "));
    }
  }
  fmt::print("\nParameters (set with {} name=value):\n",
             d.kind == QFORGE_COMPONENT_POSTPROCESS  ? "--pp-set"
             : d.kind == QFORGE_COMPONENT_PREPROCESS ? "--pre-set"
                                                     : "--set");
  if (d.param_count == 0) fmt::print("  (none)\n");
  for (uint32_t k = 0; k < d.param_count; ++k) {
    const qforge_param_desc& p = *d.params[k];
    fmt::print("  {:<14} {:<11} default {:<8} accepts {}\n", p.name, host::type_name(p.type),
               p.default_value ? p.default_value : "(required)", host::describe_accepted(p));
    fmt::print("  {:<14} {}\n", "", p.help);
  }
  return host::kExitOk;
}

}  // namespace

void load_plugins(host::Registry& registry) {
  registry.load();
  for (const auto& r : registry.refusals())
    host::log(host::LogLevel::warn, "plugin {} refused: {}", r.library, r.reason);
}

std::map<std::string, std::string> parse_sets(const std::vector<std::string>& sets) {
  std::map<std::string, std::string> out;
  for (const auto& s : sets) {
    auto [name, value] = host::split_assignment(s);
    if (!out.emplace(name, value).second)
      throw host::UsageError(fmt::format("--set {} given twice", name));
  }
  return out;
}

int plugins_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge plugins [--json]\n"
      "       qforge plugins show ID [--json]\n\n"
      "Lists the loaded plugin components (and, on stderr, each refused library with\n"
      "its reason), or describes one component and its parameters.\n\nOptions");
  opts.add_options()("help,h", "show this help")("json", "print JSON instead of text");
  po::options_description hidden;
  hidden.add_options()("words", po::value<std::vector<std::string>>());
  po::options_description all;
  all.add(opts).add(hidden);
  po::positional_options_description pos;
  pos.add("words", -1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(all).positional(pos).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  std::vector<std::string> words;
  if (vm.count("words")) words = vm["words"].as<std::vector<std::string>>();
  registry.load();
  bool as_json = vm.count("json") > 0;
  if (words.empty()) return list(registry, as_json);
  if (words[0] == "show" && words.size() == 2) return show(registry, words[1], as_json);
  throw host::UsageError("usage: qforge plugins [--json] | qforge plugins show ID [--json]");
}

}  // namespace qforge::cli
