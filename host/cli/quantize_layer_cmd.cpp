// `qforge quantize-layer`: quantize one weight matrix with any quantizer
// plugin, then load the packed result into the inference layer that consumes
// its format and check it: a quick check of a plugin. The matrix is random
// (seeded Gaussian); the output says so.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"

namespace po = boost::program_options;
using nlohmann::json;

namespace qforge::cli {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int64_t bytes_of(const at::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

}  // namespace

int quantize_layer_command(const Args& args, host::Registry& registry) {
  po::options_description opts(
      "Usage: qforge quantize-layer --method ID [--set name=value ...] [options]\n\n"
      "Quantizes one random Gaussian weight matrix (seeded; not a real model) with the\n"
      "quantizer ID, reports the error and the packed size, then builds the packed\n"
      "layer with the inference layer that consumes the format and checks its forward\n"
      "pass against the dequantized weight. A quantizer that needs calibration\n"
      "(feature needs-hessian) gets H = 2/n XᵀX of n = cols + 256 synthetic input rows,\n"
      "Gaussian with log-normal per-column scales (outlier channels, as in real activations).\n\nOptions");
  opts.add_options()
      ("help,h", "show this help")
      ("method", po::value<std::string>(), "quantizer component id (see `qforge plugins`)")
      ("set", po::value<std::vector<std::string>>()->composing(),
       "method parameter name=value (repeatable; see `qforge plugins show ID`)")
      ("rows", po::value<int64_t>()->default_value(4096), "output features")
      ("cols", po::value<int64_t>()->default_value(4096), "input features")
      ("seed", po::value<uint64_t>()->default_value(0), "random seed")
      ("json", "print JSON instead of text");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).run(), vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return host::kExitOk;
  }
  if (!vm.count("method")) throw host::UsageError("quantize-layer: --method ID is required");
  int64_t rows = vm["rows"].as<int64_t>(), cols = vm["cols"].as<int64_t>();
  if (rows < 1 || cols < 1 || rows > (1 << 20) || cols > (1 << 20))
    throw host::UsageError("--rows and --cols must be in [1, 1048576]");

  load_plugins(registry);
  std::string id = vm["method"].as<std::string>();
  const host::Component* q = registry.find(id);
  if (q == nullptr || q->quantizer() == nullptr)
    throw host::UsageError(fmt::format("no quantizer with id '{}' (see `qforge plugins`)", id));
  host::ParamValues params(id, q->desc->params, q->desc->param_count,
                           parse_sets(vm.count("set") ? vm["set"].as<std::vector<std::string>>()
                                                      : std::vector<std::string>{}));

  auto gen = at::make_generator<at::CPUGeneratorImpl>(vm["seed"].as<uint64_t>());
  host::QuantizeRequest req;
  req.layer_name = "random";
  req.weight = at::normal(0.0, 0.02, {rows, cols}, gen);
  bool needs_hessian = false;
  for (const char* const* f = q->desc->features; f != nullptr && *f != nullptr; ++f)
    needs_hessian = needs_hessian || std::string(*f) == "needs-hessian";
  std::string hessian = "none";
  if (needs_hessian) {
    const int64_t n = cols + 256;
    at::Tensor x = at::normal(0.0, 1.0, {n, cols}, gen) * at::exp(at::normal(0.0, 1.0, {1, cols}, gen));
    req.hessian = at::matmul(x.t(), x).mul_(2.0 / static_cast<double>(n));
    req.nsamples = static_cast<uint64_t>(n);
    hessian = fmt::format("synthetic, 2/n XᵀX of {} Gaussian rows with log-normal column scales", n);
  }

  auto t0 = std::chrono::steady_clock::now();
  host::QuantResult r = host::quantize_layer(*q, req, params);
  double t_quant = seconds_since(t0);

  at::Tensor diff = r.dequantized - req.weight;
  double rel_w = (diff.norm() / req.weight.norm()).item<double>();
  int64_t packed = 0;
  for (const auto& [name, t] : r.tensors) packed += bytes_of(t);
  double bits_per_weight = 8.0 * static_cast<double>(packed) / static_cast<double>(rows * cols);

  json out = {{"input", "random Gaussian matrix N(0, 0.02^2), not a real model"},
              {"method", id},
              {"parameters", params.text()},
              {"shape", {rows, cols}},
              {"seed", vm["seed"].as<uint64_t>()},
              {"hessian", hessian},
              {"format", r.format},
              {"metadata", json::parse(r.metadata)},
              {"packed_bytes", packed},
              {"fp32_bytes", rows * cols * 4},
              {"bits_per_weight", bits_per_weight},
              {"relative_weight_error", rel_w},
              {"quantize_seconds", t_quant},
              {"metrics", r.metrics}};

  const host::Component* layer_c = registry.find_inference_layer(r.format);
  if (layer_c != nullptr) {
    host::PackedLayer layer(*layer_c, r);
    at::Tensor x = at::normal(0.0, 1.0, {1, cols}, gen);
    at::Tensor y_ref = at::matmul(x, r.dequantized.t());
    auto t1 = std::chrono::steady_clock::now();
    at::Tensor y = layer.forward(x);
    double t_fwd = seconds_since(t1);
    double rel_y = ((y - y_ref).norm() / y_ref.norm().clamp_min(1e-30)).item<double>();
    out["inference_layer"] = {{"id", layer_c->desc->id},
                              {"forward_relative_difference", rel_y},
                              {"forward_seconds_batch1", t_fwd}};
    if (rel_y > 1e-4)
      throw host::PluginError(QFORGE_STATUS_INTERNAL,
                              fmt::format("{}: forward differs from the dequantized weight by {:.3g}",
                                          layer_c->desc->id, rel_y));
  } else {
    out["inference_layer"] = nullptr;
  }

  if (vm.count("json")) {
    std::cout << out.dump(2) << "\n";
    return host::kExitOk;
  }
  fmt::print("input:            {}x{} random Gaussian matrix (seed {}), not a real model\n", rows,
             cols, vm["seed"].as<uint64_t>());
  if (needs_hessian) fmt::print("hessian:          {}\n", hessian);
  std::string ps;
  for (const auto& [k, v] : params.text()) ps += fmt::format("{}{}={}", ps.empty() ? "" : " ", k, v);
  fmt::print("method:           {} ({})\n", id, ps.empty() ? "no parameters" : ps);
  fmt::print("format:           {} {}\n", r.format, r.metadata);
  fmt::print("packed size:      {:.2f} MiB ({:.3f} bits/weight; fp32 {:.2f} MiB)\n",
             packed / 1048576.0, bits_per_weight, rows * cols * 4 / 1048576.0);
  fmt::print("weight error:     {:.4e} (relative Frobenius)\n", rel_w);
  fmt::print("quantize time:    {:.3f} s\n", t_quant);
  for (const auto& [k, v] : r.metrics) fmt::print("metric {:<10} {:.6g}\n", k + ":", v);
  if (layer_c != nullptr)
    fmt::print("inference layer:  {}: forward matches dequantized weight (rel. diff {:.2e}), "
               "batch-1 forward {:.2f} ms\n",
               layer_c->desc->id, out["inference_layer"]["forward_relative_difference"].get<double>(),
               out["inference_layer"]["forward_seconds_batch1"].get<double>() * 1e3);
  else
    fmt::print("inference layer:  none loaded consumes {}\n", r.format);
  return host::kExitOk;
}

}  // namespace qforge::cli
