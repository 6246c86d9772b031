// GPTQ on one layer: the org.qforge.gptq plugin, called through the host
// (Registry + quantize_layer, as the pipeline calls it), against a plain
// LibTorch transcription of the reference implementation (IST-DASLab/gptq,
// gptq.py fasterquant: lazy batches of 128 columns, whole-column tensor ops,
// the same Cholesky-form inverse Hessian) measured in the same run.
//
//   qforge_bench_gptq [--rows 4096] [--cols 4096] [--repeat 1] [--desc-act]
//                     [--mse] [--bits 4] [--group-size 128] [--plugin-dir DIR]
//
// The Hessian is a random SPD matrix 2/n XᵀX (n = 1.5 · cols samples of
// correlated inputs with uneven per-channel scales). Prints seconds per
// layer for both, their ratio, and the Hessian-weighted error
// tr((W−Ŵ) H (W−Ŵ)ᵀ) of both results as a sanity check.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qh = qforge::host;
using Clock = std::chrono::steady_clock;

namespace {

double secs(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Options {
  int64_t rows = 4096, cols = 4096, bits = 4, group_size = 128;
  int repeat = 1;
  bool desc_act = false, mse = false;
  std::string plugin_dir;
};

// quant.py: quantize(x, scale, zero, maxq)
at::Tensor quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero,
                    int64_t maxq) {
  const at::Tensor q = at::clamp(at::round(x / scale) + zero, 0, maxq);
  return scale * (q - zero);
}

// quant.py: Quantizer.find_params(x, weight=True) for the rows of x
// (sym; with mse: grid 100, maxshrink 0.8, norm 2.4).
std::pair<at::Tensor, at::Tensor> find_params(const at::Tensor& x, int64_t maxq, bool sym,
                                              bool mse) {
  at::Tensor xmin = x.amin(1).clamp_max(0), xmax = x.amax(1).clamp_min(0);
  if (sym) {
    xmax = at::maximum(xmin.abs(), xmax);
    xmin = at::where(xmin.lt(0), -xmax, xmin);
  }
  const at::Tensor both_zero = xmin.eq(0).logical_and(xmax.eq(0));
  xmin.masked_fill_(both_zero, -1);
  xmax.masked_fill_(both_zero, 1);
  at::Tensor scale = (xmax - xmin) / static_cast<double>(maxq);
  at::Tensor zero = sym ? at::full_like(scale, (maxq + 1) / 2) : at::round(-xmin / scale);
  if (mse) {
    at::Tensor best = at::full_like(scale, INFINITY);
    for (int i = 0; i < 80; ++i) {
      const double p = 1 - i / 100.0;
      const at::Tensor xmin1 = p * xmin, xmax1 = p * xmax;
      const at::Tensor scale1 = (xmax1 - xmin1) / static_cast<double>(maxq);
      const at::Tensor zero1 = sym ? zero : at::round(-xmin1 / scale1);
      at::Tensor q = quantize(x, scale1.unsqueeze(1), zero1.unsqueeze(1), maxq);
      q.sub_(x).abs_().pow_(2.4);
      const at::Tensor err = q.sum(1);
      const at::Tensor better = err.lt(best);
      best = at::where(better, err, best);
      scale = at::where(better, scale1, scale);
      zero = at::where(better, zero1, zero);
    }
  }
  return {scale.unsqueeze(1), zero.unsqueeze(1)};
}

// gptq.py GPTQ.fasterquant(blocksize=128, percdamp=.01, groupsize, actorder),
// transcribed op for op. Returns the dequantized weight.
at::Tensor reference_gptq(at::Tensor W, at::Tensor H, int64_t bits, int64_t groupsize,
                          bool actorder, bool mse) {
  const int64_t columns = W.size(1), blocksize = 128, maxq = (int64_t{1} << bits) - 1;
  const double percdamp = 0.01;
  const bool sym = true;
  W = W.clone();
  H = H.clone();
  at::Tensor scale, zero;
  std::tie(scale, zero) = find_params(W, maxq, sym, mse);
  const at::Tensor dead = H.diagonal().eq(0);
  H.diagonal().masked_fill_(dead, 1);
  W.masked_fill_(dead.unsqueeze(0), 0);
  at::Tensor perm, invperm;
  if (actorder) {
    perm = at::argsort(H.diagonal(), 0, /*descending=*/true);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
    invperm = at::argsort(perm);
  }
  at::Tensor Losses = at::zeros_like(W), Q = at::zeros_like(W);
  const double damp = percdamp * H.diagonal().mean().item<double>();
  H.diagonal().add_(damp);
  H = at::linalg_cholesky(H);
  H = at::cholesky_inverse(H);
  H = at::linalg_cholesky(H, /*upper=*/true);
  const at::Tensor Hinv = H;

  for (int64_t i1 = 0; i1 < columns; i1 += blocksize) {
    const int64_t i2 = std::min(i1 + blocksize, columns), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone();
    at::Tensor Q1 = at::zeros_like(W1), Err1 = at::zeros_like(W1), Losses1 = at::zeros_like(W1);
    const at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    for (int64_t i = 0; i < count; ++i) {
      const at::Tensor w = W1.select(1, i);
      const at::Tensor d = Hinv1[i][i];
      if (groupsize != -1 && (i1 + i) % groupsize == 0)
        std::tie(scale, zero) =
            find_params(W.narrow(1, i1 + i, std::min(groupsize, columns - i1 - i)), maxq, sym,
                        mse);
      const at::Tensor q = quantize(w.unsqueeze(1), scale, zero, maxq).flatten();
      Q1.select(1, i).copy_(q);
      Losses1.select(1, i).copy_((w - q).pow(2) / d.pow(2));
      const at::Tensor err1 = (w - q) / d;
      W1.narrow(1, i, count - i)
          .sub_(err1.unsqueeze(1).matmul(Hinv1[i].narrow(0, i, count - i).unsqueeze(0)));
      Err1.select(1, i).copy_(err1);
    }
    Q.narrow(1, i1, count).copy_(Q1);
    Losses.narrow(1, i1, count).copy_(Losses1 / 2);
    if (i2 < columns)
      W.narrow(1, i2, columns - i2)
          .sub_(Err1.matmul(Hinv.narrow(0, i1, count).narrow(1, i2, columns - i2)));
  }
  if (actorder) Q = Q.index_select(1, invperm);
  return Q;
}

double hessian_error(const at::Tensor& w, const at::Tensor& wq, const at::Tensor& h) {
  const at::Tensor d = w - wq;
  return (d.mm(h) * d).sum().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    auto next = [&]() -> std::string {
      if (k + 1 >= argc) {
        fmt::print(stderr, "{} needs a value\n", a);
        std::exit(2);
      }
      return argv[++k];
    };
    if (a == "--rows") o.rows = std::stoll(next());
    else if (a == "--cols") o.cols = std::stoll(next());
    else if (a == "--bits") o.bits = std::stoll(next());
    else if (a == "--group-size") o.group_size = std::stoll(next());
    else if (a == "--repeat") o.repeat = std::max(1, std::stoi(next()));
    else if (a == "--desc-act") o.desc_act = true;
    else if (a == "--mse") o.mse = true;
    else if (a == "--plugin-dir") o.plugin_dir = next();
    else {
      fmt::print(stderr,
                 "usage: qforge_bench_gptq [--rows N] [--cols N] [--bits B] [--group-size G] "
                 "[--repeat R] [--desc-act] [--mse] [--plugin-dir DIR]\n");
      return 2;
    }
  }
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  fmt::print("GPTQ on one {}x{} layer: {} bits, group {}, desc_act {}, mse {}, {} threads, "
             "OMP_WAIT_POLICY={}\n",
             o.rows, o.cols, o.bits, o.group_size, o.desc_act, o.mse, at::get_num_threads(),
             wait ? wait : "(unset)");

  qh::Registry registry;
  if (!o.plugin_dir.empty()) registry.add_directory(o.plugin_dir);
  registry.load();
  const qh::Component* gptq = registry.find("org.qforge.gptq");
  if (gptq == nullptr) {
    fmt::print(stderr, "org.qforge.gptq not found (searched: {})\n",
               fmt::join(registry.directories(), ", "));
    return 1;
  }

  auto t0 = Clock::now();
  at::manual_seed(0);
  const at::Tensor W = at::randn({o.rows, o.cols}) * 0.02;
  const int64_t n = o.cols + o.cols / 2;
  const at::Tensor mix =
      at::eye(o.cols) + at::randn({o.cols, o.cols}) * (0.3 / std::sqrt(double(o.cols)));
  const at::Tensor X = at::randn({n, o.cols}).mm(mix) * at::exp(at::randn({o.cols}));
  const at::Tensor H = (X.t().mm(X) * (2.0 / n)).contiguous();
  fmt::print("setup (random W, SPD Hessian from {} samples): {:.2f} s\n", n, secs(t0));

  const std::map<std::string, std::string> settings = {
      {"bits", std::to_string(o.bits)},
      {"group_size", std::to_string(o.group_size)},
      {"desc_act", o.desc_act ? "true" : "false"},
      {"mse", o.mse ? "true" : "false"}};
  qh::ParamValues params(gptq->desc->id, gptq->desc->params, gptq->desc->param_count, settings);
  qh::QuantizeRequest req;
  req.layer_name = "bench.layer";
  req.weight = W;
  req.hessian = H;
  req.nsamples = static_cast<uint64_t>(n);

  double plugin_s = 1e30, ref_s = 1e30;
  qh::QuantResult result;
  at::Tensor ref;
  for (int r = 0; r < o.repeat; ++r) {
    t0 = Clock::now();
    result = qh::quantize_layer(*gptq, req, params);
    plugin_s = std::min(plugin_s, secs(t0));
    t0 = Clock::now();
    ref = reference_gptq(W, H, o.bits, o.group_size, o.desc_act, o.mse);
    ref_s = std::min(ref_s, secs(t0));
  }
  fmt::print("org.qforge.gptq (through the host): {:8.2f} s per layer\n", plugin_s);
  fmt::print("reference transcription (LibTorch): {:8.2f} s per layer\n", ref_s);
  fmt::print("speed-up: {:.2f}x\n", ref_s / plugin_s);
  const double e_plugin = hessian_error(W, result.dequantized, H);
  const double e_ref = hessian_error(W, ref, H);
  fmt::print("tr((W-Q) H (W-Q)^T): plugin {:.6g}, reference {:.6g} (ratio {:.4f}; the plugin's "
             "scales are float16)\n",
             e_plugin, e_ref, e_plugin / e_ref);
  return 0;
}
