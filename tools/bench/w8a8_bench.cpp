// W8A8 linear layers (kernels/: int8_matmul.hpp, fp8.hpp through
// torch_w8a8.hpp) against LibTorch's float32 at::linear, measured in the
// same run.
//
//   qforge_bench_w8a8 [--reps 15] [--threads N] [--no-sweep]
//
// For W [out, in] = 4096 x 4096 and 11008 x 4096 (the projections of a 7B
// Llama) and batches of 1, 16 and 512 rows: the time of y = x Wᵀ through
// LibTorch float32 at::linear, through Int8Linear::forward (activation
// quantization included) on each INT8 path (the dispatched best, and avx2),
// and through Fp8Linear::forward (activation rounding included) on each ISA,
// with the ratio fp32 time / time, fp32 being the faster of at::linear and
// (batch 1) at::mv. GB/s = weight bytes streamed per second
// (what bounds batch 1); GOP/s = 2 rows out in / time. Every figure is the
// median of --reps calls (fewer at 512 rows) after warm-up; each call uses
// the next of several copies of the weights (>= 256 MiB together), so that
// they never sit in the last-level cache, as in a model where the other
// layers evict them. Then a sweep over rows of the two FP8 forwards
// (kernels, decode + GEMM) on the active ISA, the measurement behind
// fp8_kernel_max_rows (run it with QFORGE_KERNEL=avx2 / portable too).
// Like the qforge CLI, it sets OMP_WAIT_POLICY=PASSIVE when unset (and
// re-executes itself).
#include <qforge_kernels/fp8.hpp>
#include <qforge_kernels/int8_matmul.hpp>
#include <qforge_kernels/torch_w8a8.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "timing.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

namespace qk = qforge::kernels;
namespace qa = qforge::kernels::aten;
using qforge::bench::copies_for;
using qforge::bench::time_median;

namespace {


struct Options {
  int reps = 15;
  int threads = 0;
  bool sweep = true;
};

template <class T>
std::vector<T> copies_of(const T& layer, size_t bytes) {
  return std::vector<T>(copies_for(bytes), layer);
}

// Random codes, scales around 0.01 per output channel.
qa::Int8Linear random_int8(int64_t out, int64_t in) {
  const at::Tensor w = at::randint(-128, 128, {out, in}, at::kChar);
  return qa::Int8Linear(w, at::rand({out}) * 0.01 + 0.005);
}

// Random finite e4m3 codes (NaN codes 0x7F / 0xFF moved to +-448).
qa::Fp8Linear random_fp8(int64_t out, int64_t in) {
  at::Tensor w = at::randint(0, 256, {out, in}, at::kByte);
  w.sub_(w.bitwise_and(0x7F).eq(0x7F).to(at::kByte));
  return qa::Fp8Linear(w, at::rand({out}) * 1e-3 + 1e-4);
}

struct Row {
  std::string method;
  double seconds;
  double weight_bytes;
};

void print_header() {
  fmt::print("{:<12} {:>5} {:<24} {:>10} {:>9} {:>9} {:>9}\n", "W", "rows", "method", "ms",
             "vs fp32", "GB/s", "GOP/s");
}

void print_row(int64_t out, int64_t in, int64_t rows, const Row& r, double fp32) {
  fmt::print("{:<12} {:>5} {:<24} {:>10.3f} {:>8.2f}x {:>9.1f} {:>9.1f}\n",
             fmt::format("{}x{}", out, in), rows, r.method, r.seconds * 1e3, fp32 / r.seconds,
             r.weight_bytes / r.seconds / 1e9, 2.0 * rows * out * in / r.seconds / 1e9);
}

// The INT8 paths timed: the best (Isa kAvx512 selects it) and avx2.
std::vector<std::pair<qk::Isa, qk::Int8Path>> int8_choices() {
  std::vector<std::pair<qk::Isa, qk::Int8Path>> v;
  for (qk::Isa isa : {qk::Isa::kAvx512, qk::Isa::kAvx2}) {
    if (!qk::isa_supported(isa)) continue;
    const qk::Int8Path p = qk::int8_path_for(isa);
    if (v.empty() || v.back().second != p) v.emplace_back(isa, p);
  }
  if (v.empty()) v.emplace_back(qk::Isa::kPortable, qk::Int8Path::kPortable);
  return v;
}

std::vector<qk::Isa> fp8_choices() {
  std::vector<qk::Isa> v;
  for (qk::Isa isa : {qk::Isa::kAvx512, qk::Isa::kAvx2})
    if (qk::isa_supported(isa)) v.push_back(isa);
  if (v.empty()) v.push_back(qk::Isa::kPortable);
  return v;
}

void bench_shape(int64_t out, int64_t in, const Options& o) {
  std::vector<at::Tensor> w32;
  for (size_t k = 0; k < copies_for(static_cast<size_t>(out * in * 4)); ++k)
    w32.push_back(at::randn({out, in}) * 0.02);
  const auto i8 = copies_of(random_int8(out, in), static_cast<size_t>(out * in));
  const auto f8 = copies_of(random_fp8(out, in), static_cast<size_t>(out * in));
  for (int64_t rows : {1, 16, 512}) {
    const int reps = rows >= 512 ? std::max(3, o.reps / 3) : o.reps;
    const at::Tensor x = at::randn({rows, in});
    const double linear = time_median(reps, 2, [&](int k) { at::linear(x, w32[k % w32.size()]); });
    std::vector<Row> table = {{"fp32 at::linear", linear, 4.0 * out * in}};
    double fp32 = linear;
    if (rows == 1) {  // at::linear's GEMM path is slower than at::mv's GEMV here
      const at::Tensor xv = x.view({in});
      const double mv = time_median(reps, 2, [&](int k) { at::mv(w32[k % w32.size()], xv); });
      table.push_back({"fp32 at::mv", mv, 4.0 * out * in});
      fp32 = std::min(fp32, mv);
    }
    for (const auto& [isa, path] : int8_choices()) {
      qk::set_isa(isa);
      const double t = time_median(reps, 2, [&](int k) { i8[k % i8.size()].forward(x); });
      table.push_back({fmt::format("int8 {}", qk::int8_path_name(path)), t, 1.0 * out * in});
    }
    for (qk::Isa isa : fp8_choices()) {
      qk::set_isa(isa);
      const double t = time_median(reps, 2, [&](int k) { f8[k % f8.size()].forward(x); });
      const bool kernels = rows <= qa::fp8_kernel_max_rows(isa);
      table.push_back({fmt::format("fp8 {} ({})", qk::isa_name(isa), kernels ? "kernel" : "GEMM"),
                       t, 1.0 * out * in});
    }
    qk::reset_isa();
    for (const Row& r : table) print_row(out, in, rows, r, fp32);
  }
}

// FP8 forward_kernels vs forward_gemm over batch sizes (active ISA).
void fp8_sweep(const Options& o) {
  const int64_t out = 4096, in = 4096;
  const auto f8 = copies_of(random_fp8(out, in), static_cast<size_t>(out * in));
  const at::Tensor w32 = at::randn({out, in}) * 0.02;
  const int64_t max_rows = qa::fp8_kernel_max_rows(qk::active_isa());
  fmt::print(
      "\nFP8 4096x4096, {}: ms per forward through the kernels and through decode + "
      "GEMM (forward takes the kernels up to {} rows)\n",
      qk::isa_name(qk::active_isa()),
      max_rows == std::numeric_limits<int64_t>::max() ? "any number of" : std::to_string(max_rows));
  fmt::print("{:>5} {:>10} {:>12} {:>10}\n", "rows", "kernels", "decode+GEMM", "fp32");
  for (int64_t rows : {1, 4, 16, 32, 64, 256, 1024}) {
    const int reps = std::max(3, o.reps / 3);
    const at::Tensor x = at::randn({rows, in});
    const double tk = time_median(reps, 1, [&](int k) { f8[k % f8.size()].forward_kernels(x); });
    const double tg = time_median(reps, 1, [&](int k) { f8[k % f8.size()].forward_gemm(x); });
    const double tf = time_median(reps, 1, [&](int) { at::linear(x, w32); });
    fmt::print("{:>5} {:>10.3f} {:>12.3f} {:>10.3f}\n", rows, tk * 1e3, tg * 1e3, tf * 1e3);
  }
}

Options parse(int argc, char** argv) {
  bool sweep = true;
  const qforge::bench::RunOptions r = qforge::bench::parse_run_options(
      argc, argv, Options{}.reps, "qforge_bench_w8a8 [--reps N] [--threads N] [--no-sweep]",
      [&](const std::string& a) {
        if (a != "--no-sweep") return false;
        sweep = false;
        return true;
      });
  return {r.reps, r.thread_count(), sweep};
}

}  // namespace

int main(int argc, char** argv) {
  qforge::bench::passive_omp_wait(argv);
  const Options o = parse(argc, argv);
  at::set_num_threads(o.threads);
  std::string paths;
  for (qk::Int8Path p : qk::int8_paths())
    paths += std::string(paths.empty() ? "" : ", ") + qk::int8_path_name(p);
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  fmt::print(
      "qforge_bench_w8a8: INT8 paths {} (dispatched: {}), FP8 kernels {}, {} threads, "
      "OMP_WAIT_POLICY={}, median of {} calls ({} at 512 rows)\n",
      paths, qk::int8_path_name(qk::active_int8_path()), qk::isa_name(qk::active_isa()),
      at::get_num_threads(), wait ? wait : "unset", o.reps, std::max(3, o.reps / 3));
  fmt::print(
      "y = x Wᵀ; int8/fp8 = the qforge layer's forward incl. activation quantization; "
      "vs fp32 = (faster of at::linear, at::mv) ms / ms; GB/s = weight bytes per second\n");
  print_header();
  for (const auto& [out, in] :
       std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {11008, 4096}})
    bench_shape(out, in, o);
  if (o.sweep) fp8_sweep(o);
  return 0;
}
