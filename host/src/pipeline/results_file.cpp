#include "qforge_host/pipeline/results_file.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <memory>
#include <nlohmann/json.hpp>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

using nlohmann::json;

namespace qforge::host {

namespace {
constexpr const char* kParams = "params/";
}  // namespace

void save_results(const std::string& path, const std::string& method,
                  const std::vector<SavedLayer>& layers, const ParamList& params) {
  json report = {{"method", method}, {"layers", json::array()}, {"params", json::array()}};
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, t] : params) {
    tensors.emplace_back(kParams + name, t);
    report["params"].push_back(name);
  }
  for (const auto& l : layers) {
    json names = json::array();
    for (const auto& [name, t] : l.result.tensors) {
      tensors.emplace_back(l.report.name + "/" + name, t);
      names.push_back(name);
    }
    bool deq = l.result.dequantized.defined();
    if (deq) tensors.emplace_back(l.report.name + "/dequantized", l.result.dequantized);
    report["layers"].push_back({{"name", l.report.name},
                                {"format", l.report.format},
                                {"metadata", l.report.metadata},
                                {"metrics", l.report.metrics},
                                {"tensors", names},
                                {"dequantized", deq}});
  }
  save_safetensors(path, tensors, {{"qforge.results", report.dump()}});
}

std::vector<SavedLayer> load_results(const std::string& path) {
  SafetensorsFile file(path);
  auto it = file.metadata().find("qforge.results");
  if (it == file.metadata().end())
    throw UsageError(fmt::format("{}: not a qforge results file (no qforge.results metadata)", path));
  json report = json::parse(it->second, nullptr, false);
  if (report.is_discarded() || !report.is_object() || !report.contains("layers") ||
      !report["layers"].is_array())
    throw UsageError(fmt::format("{}: malformed qforge.results metadata", path));
  std::vector<SavedLayer> out;
  if (report["layers"].empty()) throw UsageError(fmt::format("{}: holds no layers", path));
  try {
    for (const auto& j : report["layers"]) {
      SavedLayer l;
      l.report.name = j.at("name").get<std::string>();
      l.report.format = j.at("format").get<std::string>();
      l.report.metadata = j.at("metadata").get<std::string>();
      l.report.metrics = j.at("metrics").get<std::map<std::string, double>>();
      l.result.format = l.report.format;
      l.result.metadata = l.report.metadata;
      for (const auto& name : j.at("tensors"))
        l.result.tensors[name.get<std::string>()] =
            file.load(l.report.name + "/" + name.get<std::string>(),
                      to_scalar_type(file.info(l.report.name + "/" + name.get<std::string>()).dtype));
      if (j.at("dequantized").get<bool>())
        l.result.dequantized = file.load(l.report.name + "/dequantized", at::kFloat);
      out.push_back(std::move(l));
    }
  } catch (const json::exception& e) {
    throw UsageError(fmt::format("{}: malformed qforge.results metadata: {}", path, e.what()));
  }
  return out;
}

ParamList load_result_params(const std::string& path) {
  SafetensorsFile file(path);
  auto it = file.metadata().find("qforge.results");
  const json report = it == file.metadata().end() ? json() : json::parse(it->second, nullptr, false);
  ParamList out;
  if (!report.is_object() || !report.contains("params")) return out;
  if (!report["params"].is_array())
    throw UsageError(fmt::format("{}: malformed qforge.results metadata (params)", path));
  for (const auto& name : report["params"]) {
    if (!name.is_string() || !file.contains(kParams + name.get<std::string>()))
      throw UsageError(fmt::format("{}: malformed qforge.results metadata (params)", path));
    out.emplace_back(name.get<std::string>(), file.load(kParams + name.get<std::string>(), at::kFloat));
  }
  return out;
}

void update_results(const std::string& path, const std::map<std::string, QuantResult>& tuned) {
  std::string method;
  {
    const SafetensorsFile file(path);
    auto it = file.metadata().find("qforge.results");
    const json report = it == file.metadata().end() ? json() : json::parse(it->second, nullptr, false);
    if (report.is_object() && report.contains("method") && report["method"].is_string())
      method = report["method"].get<std::string>();
  }
  std::vector<SavedLayer> layers = load_results(path);
  for (SavedLayer& l : layers) {
    auto it = tuned.find(l.report.name);
    if (it == tuned.end()) continue;
    if (it->second.format != l.result.format)
      throw UsageError(fmt::format("{}: {} is {} there, the tuned result {}", path, l.report.name,
                                   l.result.format, it->second.format));
    const bool deq = l.result.dequantized.defined();
    l.result.tensors = it->second.tensors;
    l.result.dequantized = deq ? it->second.dequantized : at::Tensor();
  }
  save_results(path, method, layers, load_result_params(path));
}

std::vector<LayerReport> merge_results(const std::vector<std::string>& paths,
                                       const std::string& method, const std::string& path) {
  std::vector<std::unique_ptr<SafetensorsFile>> parts;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  std::vector<LayerReport> reports;
  json merged = {{"method", method}, {"layers", json::array()}, {"params", json::array()}};
  for (const auto& p : paths) {
    parts.push_back(std::make_unique<SafetensorsFile>(p));
    for (const auto& [name, info] : parts.back()->tensors())
      tensors.emplace_back(name, parts.back()->view(name));
    json part = json::parse(parts.back()->metadata().at("qforge.results"));
    for (const auto& l : part["layers"]) {
      LayerReport r;
      r.name = l["name"];
      r.format = l["format"];
      r.metadata = l["metadata"];
      r.metrics = l["metrics"].get<std::map<std::string, double>>();
      reports.push_back(r);
      merged["layers"].push_back(l);
    }
    for (const auto& p : part.value("params", json::array())) merged["params"].push_back(p);
  }
  save_safetensors(path, tensors, {{"qforge.results", merged.dump()}});
  return reports;
}

}  // namespace qforge::host
