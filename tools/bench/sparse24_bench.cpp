// 2:4-sparse float32 weights (kernels/: sparse24.hpp) against LibTorch's
// dense float32 product with the same weights, measured in the same run.
//
//   qforge_bench_sparse24 [--reps 15] [--threads N]
//
// For W [out, in] = 4096 x 4096, 11008 x 4096 and 4096 x 11008 (a 7B Llama's
// projections), pruned 2:4 by magnitude (the 2 largest |w| of every 4
// inputs kept), and batches of 1, 16 and 128 rows: the time of y = x Wᵀ
// through LibTorch float32 (the faster of at::linear and, for one row, at::mv;
// W dense, its zeros included) and through sparse24::matmul on each ISA this
// machine has (the portable kernels at one row only), split over the same
// threads by at::parallel_for; vs dense = dense ms / ms. Bytes: what each
// representation streams per call (dense: 4 per weight; 2:4: 4 per kept
// value + 2 bits); GB/s = those bytes per second. Every figure is the median
// of --reps calls (a third of them at 128 rows) after warm-up; each call
// uses the next of several copies of the weights (>= 256 MiB together), so
// that they never sit in the last-level cache. Like the qforge CLI, it sets
// OMP_WAIT_POLICY=PASSIVE when unset (and re-executes itself).
#include <qforge_kernels/sparse24.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "timing.hpp"

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

namespace qk = qforge::kernels;
namespace s24 = qforge::kernels::sparse24;
using qforge::bench::copies_for;
using qforge::bench::time_median;

namespace {

struct Options {
  int reps = 15;
  int threads = 0;
};

// Gaussian W [out, in] * 0.02 with the 2 smallest |w| of every 4 inputs zeroed.
at::Tensor pruned_24(int64_t out, int64_t in) {
  const at::Tensor w = (at::randn({out, in}) * 0.02).view({out, in / 4, 4});
  const at::Tensor keep = std::get<1>(w.abs().topk(2, -1));
  const at::Tensor mask = at::zeros_like(w).scatter_(-1, keep, 1.0);
  return (w * mask).view({out, in}).contiguous();
}

void parallel(int64_t b, int64_t e, int64_t grain, const std::function<void(int64_t, int64_t)>& f) {
  at::parallel_for(b, e, grain, f);
}

void sparse_matmul(const s24::Packed& p, const at::Tensor& x, at::Tensor& y) {
  s24::matmul(p, x.data_ptr<float>(), x.size(0), y.data_ptr<float>(), nullptr, parallel);
}

struct Row {
  std::string method;
  double seconds;
  double bytes;
};

void print_header() {
  fmt::print("{:<12} {:>5} {:<22} {:>10} {:>9} {:>9} {:>9} {:>9}\n", "W", "rows", "method", "ms",
             "vs dense", "MiB", "GB/s", "GFLOP/s");
}

void print_row(int64_t out, int64_t in, int64_t rows, const Row& r, double dense) {
  fmt::print("{:<12} {:>5} {:<22} {:>10.3f} {:>8.2f}x {:>9.1f} {:>9.1f} {:>9.1f}\n",
             fmt::format("{}x{}", out, in), rows, r.method, r.seconds * 1e3, dense / r.seconds,
             r.bytes / (1 << 20), r.bytes / r.seconds / 1e9,
             2.0 * rows * out * in / r.seconds / 1e9);
}

void bench_shape(int64_t out, int64_t in, const Options& o) {
  std::vector<at::Tensor> dense;
  for (size_t k = 0; k < copies_for(static_cast<size_t>(out * in * 4)); ++k)
    dense.push_back(pruned_24(out, in));
  std::vector<s24::Packed> sparse;
  const s24::Packed first = s24::pack(dense[0].data_ptr<float>(), out, in);
  const size_t sparse_bytes = first.bytes();
  for (size_t k = 0; k < copies_for(sparse_bytes); ++k)
    sparse.push_back(k == 0 ? first
                            : s24::pack(dense[k % dense.size()].data_ptr<float>(), out, in));
  std::vector<qk::Isa> isas;
  for (qk::Isa isa : {qk::Isa::kAvx512, qk::Isa::kAvx2, qk::Isa::kPortable})
    if (qk::isa_supported(isa)) isas.push_back(isa);

  for (int64_t rows : {1, 16, 128}) {
    const int reps = rows >= 128 ? std::max(3, o.reps / 3) : o.reps;
    const at::Tensor x = at::randn({rows, in});
    at::Tensor y = at::empty({rows, out});
    const double linear =
        time_median(reps, 2, [&](int k) { at::linear(x, dense[k % dense.size()]); });
    std::vector<Row> table = {{"fp32 at::linear", linear, 4.0 * out * in}};
    double best = linear;
    if (rows == 1) {
      const at::Tensor xv = x.view({in});
      const double mv = time_median(reps, 2, [&](int k) { at::mv(dense[k % dense.size()], xv); });
      table.push_back({"fp32 at::mv", mv, 4.0 * out * in});
      best = std::min(best, mv);
    }
    const at::Tensor ref = at::linear(x.to(at::kDouble), dense[0].to(at::kDouble));
    for (qk::Isa isa : isas) {
      if (isa == qk::Isa::kPortable && rows > 1) continue;
      qk::set_isa(isa);
      const double t =
          time_median(reps, 2, [&](int k) { sparse_matmul(sparse[k % sparse.size()], x, y); });
      sparse_matmul(sparse[0], x, y);
      const double err = (y.to(at::kDouble) - ref).abs().max().item<double>() /
                         ref.abs().max().item<double>();
      if (!(err < 1e-4)) fmt::print("!! sparse24 {} differs from the dense product: {}\n",
                                    qk::isa_name(isa), err);
      table.push_back({fmt::format("2:4 {}", qk::isa_name(isa)), t, 1.0 * sparse_bytes});
    }
    qk::reset_isa();
    for (const Row& r : table) print_row(out, in, rows, r, best);
  }
}

Options parse(int argc, char** argv) {
  const qforge::bench::RunOptions r = qforge::bench::parse_run_options(
      argc, argv, Options{}.reps, "qforge_bench_sparse24 [--reps N] [--threads N]");
  return {r.reps, r.thread_count()};
}

}  // namespace

int main(int argc, char** argv) {
  qforge::bench::passive_omp_wait(argv);
  const Options o = parse(argc, argv);
  at::set_num_threads(o.threads);
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  fmt::print(
      "qforge_bench_sparse24: 2:4 kernels {} (dispatched: {}), {} threads, OMP_WAIT_POLICY={}, "
      "median of {} calls ({} at 128 rows)\n",
      [] {
        std::string s;
        for (qk::Isa isa : qk::supported_isas()) s += std::string(s.empty() ? "" : ", ") + qk::isa_name(isa);
        return s;
      }(),
      qk::isa_name(qk::active_isa()), at::get_num_threads(), wait ? wait : "unset", o.reps,
      std::max(3, o.reps / 3));
  fmt::print(
      "y = x Wᵀ, W pruned 2:4; dense = faster of at::linear, at::mv (float32, zeros included); "
      "vs dense = dense ms / ms; MiB, GB/s = bytes of the representation streamed per call\n");
  print_header();
  for (const auto& [out, in] : std::vector<std::pair<int64_t, int64_t>>{
           {4096, 4096}, {11008, 4096}, {4096, 11008}})
    bench_shape(out, in, o);
  return 0;
}
