// Seconds to factorize one layer with org.qforge.dbf, in each mode, through
// the host (Registry + quantize_layer, as the pipeline calls it).
//
//   qforge_bench_dbf [--rows 4096] [--cols 4096] [--bits 1.5] [--iters 2,6]
//                    [--full 600] [--plugin-dir DIR]
//
// A full run is 600 alternating iterations (OneComp's fixed count; the
// data-aware mode's upper bound, which its stopping rule usually cuts), far
// too long to repeat here on a CPU: each mode is timed at two iteration counts
// (tol 0, so exactly that many run) and the difference gives the seconds per
// iteration and the fixed cost (balancing or the SVD start, the split, the
// data-aware scale fit); the seconds for --full iterations are projected from
// them and printed as such. W is random with a low-rank part; H = 2/n XᵀX of
// correlated inputs with uneven per-channel scales.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <string>
#include <thread>

#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qh = qforge::host;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  int64_t rows = 4096, cols = 4096, full = 600, i0 = 2, i1 = 6;
  std::string bits = "1.5", plugin_dir;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    const char* v = k + 1 < argc ? argv[k + 1] : nullptr;
    if (v != nullptr && a == "--rows") {
      rows = std::atoll(argv[++k]);
    } else if (v != nullptr && a == "--cols") {
      cols = std::atoll(argv[++k]);
    } else if (v != nullptr && a == "--bits") {
      bits = argv[++k];
    } else if (v != nullptr && a == "--full") {
      full = std::atoll(argv[++k]);
    } else if (v != nullptr && a == "--iters" &&
               std::sscanf(argv[k + 1], "%ld,%ld", &i0, &i1) == 2 && 0 < i0 && i0 < i1) {
      ++k;
    } else if (v != nullptr && a == "--plugin-dir") {
      plugin_dir = argv[++k];
    } else {
      fmt::print(stderr, "usage: qforge_bench_dbf [--rows R] [--cols C] [--bits B] [--iters A,B "
                         "(0 < A < B)] [--full N] [--plugin-dir DIR]\n");
      return 2;
    }
  }
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  qh::Registry registry;
  if (!plugin_dir.empty()) registry.add_directory(plugin_dir);
  registry.load();
  const qh::Component* dbf = registry.find("org.qforge.dbf");
  if (dbf == nullptr) {
    fmt::print(stderr, "org.qforge.dbf not found (searched: {})\n",
               fmt::join(registry.directories(), ", "));
    return 1;
  }
  at::manual_seed(0);
  const at::Tensor W = at::randn({rows, 16}).mm(at::randn({16, cols})) * 0.01 +
                       at::randn({rows, cols}) * 0.02;
  const int64_t n = cols + cols / 2;
  const at::Tensor mix = at::eye(cols) + at::randn({cols, cols}) * (0.3 / std::sqrt(double(cols)));
  const at::Tensor X = at::randn({n, cols}).mm(mix) * at::exp(at::randn({cols}));
  const at::Tensor H = (X.t().mm(X) * (2.0 / n)).contiguous();
  fmt::print("org.qforge.dbf on one {}x{} layer, target_bits {}, {} threads; each mode timed at "
             "{} and {} iterations (tol 0), {} projected\n",
             rows, cols, bits, at::get_num_threads(), i0, i1, full);
  fmt::print("{:<11} {:>4} {:>10} {:>10} {:>10} {:>12} {:>16}\n", "mode", "k", "s @" + std::to_string(i0),
             "s @" + std::to_string(i1), "s / iter", "fixed s", fmt::format("{} iters (proj.)", full));
  for (const char* mode : {"onecomp", "data-aware"}) {
    double t[2] = {0, 0};
    double k = 0;
    for (int r = 0; r < 2; ++r) {
      const std::map<std::string, std::string> settings = {
          {"mode", mode}, {"target_bits", bits}, {"iters", std::to_string(r == 0 ? i0 : i1)},
          {"tol", "0"}};
      const qh::ParamValues params(dbf->desc->id, dbf->desc->params, dbf->desc->param_count, settings);
      qh::QuantizeRequest req;
      req.layer_name = "bench.layer";
      req.weight = W;
      req.hessian = H;
      req.nsamples = static_cast<uint64_t>(n);
      const auto t0 = Clock::now();
      const qh::QuantResult result = qh::quantize_layer(*dbf, req, params);
      t[r] = std::chrono::duration<double>(Clock::now() - t0).count();
      k = result.metrics.at("k");
    }
    const double per = (t[1] - t[0]) / static_cast<double>(i1 - i0);
    const double fixed = t[0] - per * static_cast<double>(i0);
    fmt::print("{:<11} {:>4.0f} {:>10.2f} {:>10.2f} {:>10.3f} {:>12.2f} {:>16.0f}\n", mode, k, t[0],
               t[1], per, fixed, fixed + per * static_cast<double>(full));
  }
  return 0;
}
