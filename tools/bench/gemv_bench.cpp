// Packed low-bit GEMV (kernels/) against LibTorch's float32 matmul and against
// the machine's memory bandwidth, all measured in the same run.
//
//   qforge_bench_gemv [--reps 25] [--threads N] [--isa portable|avx2|avx512]
//                     [--no-batches]
//
// For W [out, in] = 4096 x 4096 and 11008 x 4096 (the projections of a 7B
// Llama), batch 1: the time of one y = x Wᵀ through the qforge kernels (the
// call the inference layers make: stage x, then the output tiles split
// between at::parallel_for's threads), the time of LibTorch's float32
// at::mm(x, Wᵀ) and at::mv(W, x) on the same shape (the faster is the
// baseline), their ratio, and the kernel's effective bandwidth: the bytes it
// streams (packed codes + scales + zero points) per second, against memcpy's
// bandwidth on a 256 MiB buffer measured here too (bytes copied per second,
// i.e. each byte read once and written once; the read-only bandwidth is
// printed beside it). Every figure is the median of --reps timed calls after
// warm-up; each call uses the next of several copies of the weights, so that
// the working set (>= 256 MiB) never sits in the last-level cache, as in a
// real model where every layer's weights are evicted by the other layers'.
// A second table times batches of rows through the kernels and through
// dequantize + GEMM (the path the layers take above kGemvMaxRows rows).
// Then the same for double binary factorization (DBF, org.qforge.dbf/1) at
// 1.0, 1.5 and 2.0 sign-plane bits per weight through the sign kernels
// (sign_chain.hpp), against the fp32 and 4-bit g128 times of this run, and
// DBF's batches: sign kernels vs unpack + GEMM. And QuIP's layer at batch 1
// (the packed GEMV between two randomized Hadamard transforms) against the
// same GEMV alone.
// Like the qforge CLI, it sets OMP_WAIT_POLICY=PASSIVE when unset (and
// re-executes itself), so that OpenMP threads spinning after the kernels'
// parallel loops do not slow down OpenBLAS's threads.
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/hadamard.hpp>
#include <qforge_kernels/packed_matrix.hpp>
#include <qforge_kernels/torch_matmul.hpp>
#include <qforge_kernels/torch_sign.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include "timing.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace qk = qforge::kernels;
using qforge::bench::copies_for;
using qforge::bench::kWorkingSet;
using qforge::bench::time_median;

namespace {


struct Options {
  int reps = 25;
  int threads = 0;
  std::string isa;
  bool batches = true;
};

// memcpy of a 256 MiB buffer split between the threads; bytes copied per second.
double memcpy_bandwidth(int reps, bool threaded) {
  const size_t n = kWorkingSet;
  std::unique_ptr<char[]> a(new char[n]), b(new char[n]);
  std::memset(a.get(), 1, n);
  std::memset(b.get(), 2, n);
  const int64_t parts = 64;
  const double s = time_median(reps, 2, [&](int) {
    auto copy = [&](int64_t p0, int64_t p1) {
      std::memcpy(b.get() + p0 * (n / parts), a.get() + p0 * (n / parts), (p1 - p0) * (n / parts));
    };
    if (threaded)
      at::parallel_for(0, parts, 1, copy);
    else
      copy(0, parts);
  });
  return static_cast<double>(n) / s / 1e9;
}

// Read-only bandwidth (sum of a 256 MiB float buffer), bytes read per second.
double read_bandwidth(int reps) {
  const int64_t n = static_cast<int64_t>(kWorkingSet / sizeof(float));
  std::vector<float> a(static_cast<size_t>(n), 1.f);
  volatile float sink = 0;
  const int64_t parts = 64;
  const double s = time_median(reps, 2, [&](int) {
    std::vector<float> part(parts, 0.f);
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        float acc[16] = {};
        const float* x = a.data() + p * (n / parts);
        for (int64_t i = 0; i < n / parts; i += 16)
          for (int k = 0; k < 16; ++k) acc[k] += x[i + k];
        for (float v : acc) part[p] += v;
      }
    });
    sink = sink + part[0];
  });
  return static_cast<double>(kWorkingSet) / s / 1e9;
}

// A random quantized W [out, in]: random codes, float16 scales, integer zero
// points, groups of group_size (shuffled g_idx with act_order).
qk::PackedMatrix random_matrix(int bits, int64_t out, int64_t in, int64_t group_size,
                               bool act_order, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t words = qk::words_for(in, bits), groups = (in + group_size - 1) / group_size;
  std::vector<uint32_t> codes(static_cast<size_t>(words * out));
  for (auto& w : codes) w = rng();
  std::vector<float> scales(static_cast<size_t>(groups * out)), zeros(scales.size());
  std::uniform_int_distribution<int> z(0, (1 << bits) - 1);
  for (size_t k = 0; k < scales.size(); ++k) {
    scales[k] = std::ldexp(static_cast<float>(1024 + rng() % 1024), -17);  // float16 values
    zeros[k] = static_cast<float>(z(rng));
  }
  std::vector<int32_t> g_idx(static_cast<size_t>(in));
  for (int64_t i = 0; i < in; ++i) g_idx[i] = static_cast<int32_t>(i / group_size);
  if (act_order) std::shuffle(g_idx.begin(), g_idx.end(), rng);
  qk::QuantizedWeight d;
  d.bits = bits;
  d.in_features = in;
  d.out_features = out;
  d.codes = codes.data();
  d.code_word_stride = out;  // AutoGPTQ's [words, out]
  d.code_out_stride = 1;
  d.groups = groups;
  d.g_idx = g_idx.data();
  d.scales = scales.data();
  d.scale_group_stride = out;
  d.scale_out_stride = 1;
  d.zeros = zeros.data();
  d.zero_group_stride = out;
  d.zero_out_stride = 1;
  return qk::aten::pack(d);
}

struct Fp32 {
  double mm = 0, mv = 0;
  double best() const { return std::min(mm, mv); }
};

// LibTorch float32: at::mm(x [rows, in], Wᵀ) and, for one row, at::mv(W, x).
Fp32 time_fp32(int64_t out, int64_t in, int64_t rows, int reps) {
  const size_t copies = copies_for(static_cast<size_t>(out * in * 4));
  std::vector<at::Tensor> w;
  for (size_t k = 0; k < copies; ++k) w.push_back(at::randn({out, in}) * 0.02);
  const at::Tensor x = at::randn({rows, in});
  at::Tensor y = at::empty({rows, out});
  Fp32 r;
  r.mm = time_median(reps, 3, [&](int k) { at::mm_out(y, x, w[k % copies].t()); });
  if (rows == 1) {
    const at::Tensor xv = x.view({in});
    at::Tensor yv = y.view({out});
    r.mv = time_median(reps, 3, [&](int k) { at::mv_out(yv, w[k % copies], xv); });
  } else {
    r.mv = r.mm;
  }
  return r;
}

double time_kernel(const std::vector<qk::PackedMatrix>& m, int64_t rows, int reps, bool gemv) {
  const int64_t in = m[0].in_features(), out = m[0].out_features();
  const at::Tensor x = at::randn({rows, in});
  at::Tensor y = at::empty({rows, out});
  return time_median(reps, 3, [&](int k) {
    const qk::PackedMatrix& w = m[static_cast<size_t>(k) % m.size()];
    if (gemv)
      qk::aten::gemv(w, x, y, at::Tensor());
    else
      qk::aten::gemm_dequantized(w, x, y, at::Tensor());
  });
}

// A random double binary factorization of W [out, in] at `bits` sign-plane
// bits per weight (k = ⌊bits·out·in/(out + in)⌋, as org.qforge.dbf): random
// signs, positive scales.
qk::SignChain random_dbf(double bits, int64_t out, int64_t in, uint32_t seed) {
  const auto k = static_cast<int64_t>(bits * static_cast<double>(out) * static_cast<double>(in) /
                                      static_cast<double>(out + in));
  std::mt19937 rng(seed);
  auto plane = [&](int64_t rows, int64_t cols) {
    std::vector<uint8_t> b(static_cast<size_t>(rows * ((cols + 7) / 8)));
    for (auto& v : b) v = static_cast<uint8_t>(rng());
    return qk::SignPlane(b.data(), rows, cols);
  };
  auto scales = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& f : v) f = 0.5f + static_cast<float>(rng() % 1024) / 1024.0f;
    return v;
  };
  std::vector<qk::SignPlane> planes;
  planes.push_back(plane(k, in));
  planes.push_back(plane(out, k));
  return qk::SignChain(std::move(planes), {scales(in), scales(k), scales(out)}, {});
}

std::vector<qk::SignChain> dbf_copies(double bits, int64_t out, int64_t in) {
  std::vector<qk::SignChain> v;
  v.push_back(random_dbf(bits, out, in, 11));
  const size_t n = copies_for(v[0].packed_bytes());
  for (size_t k = 1; k < n; ++k) v.push_back(random_dbf(bits, out, in, 11 + static_cast<uint32_t>(k)));
  return v;
}

double time_dbf(const std::vector<qk::SignChain>& m, int64_t rows, int reps, bool kernel) {
  const at::Tensor x = at::randn({rows, m[0].in_features()});
  at::Tensor y = at::empty({rows, m[0].out_features()});
  return time_median(reps, 3, [&](int k) {
    const qk::SignChain& c = m[static_cast<size_t>(k) % m.size()];
    if (kernel)
      qk::aten::sign_forward_kernel(c, x, y);
    else
      qk::aten::sign_forward_gemm(c, x, y);
  });
}

// The randomized Hadamard transform of size n (hadamard_split), random signs.
qk::RandomizedHadamard random_transform(int64_t n, uint32_t seed) {
  const qk::HadamardSplit split = qk::hadamard_split(n);
  std::mt19937 rng(seed);
  std::vector<float> signs(static_cast<size_t>(n));
  for (float& v : signs) v = rng() & 1 ? 1.f : -1.f;
  std::vector<float> base;
  if (split.base > 1) {
    base = qk::hadamard_matrix(split.base);
    for (float& v : base) v /= std::sqrt(static_cast<float>(split.base));
  }
  return qk::RandomizedHadamard(split.pow2, split.base, std::move(signs), std::move(base));
}

// QuIP's layer at batch 1, as org.qforge.affine.layer runs org.qforge.quip/1:
// x ⊘ rescale, V, the packed GEMV, Uᵀ.
double time_quip(const std::vector<qk::PackedMatrix>& m, int reps) {
  const int64_t in = m[0].in_features(), out = m[0].out_features();
  const qk::RandomizedHadamard v = random_transform(in, 1), u = random_transform(out, 2);
  const at::Tensor x = at::randn({1, in}), rescale = at::rand({in}) + 0.5;
  at::Tensor y = at::empty({1, out});
  return time_median(reps, 3, [&](int k) {
    at::Tensor h = x / rescale;
    v.apply(h.data_ptr<float>(), 1, in, false);
    qk::aten::gemv(m[static_cast<size_t>(k) % m.size()], h, y, at::Tensor());
    u.apply(y.data_ptr<float>(), 1, out, true);
  });
}

std::vector<qk::PackedMatrix> copies_of(qk::PackedMatrix m) {
  const size_t n = copies_for(m.packed_bytes());
  std::vector<qk::PackedMatrix> v(n, m);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  qforge::bench::passive_omp_wait(argv);
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
    if (a == "--reps") {
      o.reps = std::max(3, std::atoi(next().c_str()));
    } else if (a == "--threads") {
      o.threads = std::atoi(next().c_str());
    } else if (a == "--isa") {
      o.isa = next();
    } else if (a == "--no-batches") {
      o.batches = false;
    } else {
      fmt::print(stderr,
                 "usage: qforge_bench_gemv [--reps N] [--threads N] "
                 "[--isa portable|avx2|avx512] [--no-batches]\n");
      return 2;
    }
  }
  at::set_num_threads(o.threads > 0 ? o.threads
                                    : static_cast<int>(std::thread::hardware_concurrency()));
  if (!o.isa.empty()) {
    bool found = false;
    for (qk::Isa isa : qk::supported_isas())
      if (o.isa == qk::isa_name(isa)) {
        qk::set_isa(isa);
        found = true;
      }
    if (!found) {
      fmt::print(stderr, "instruction set '{}' is not supported here\n", o.isa);
      return 2;
    }
  }
  std::string isas;
  for (qk::Isa isa : qk::supported_isas()) isas += std::string(isas.empty() ? "" : ", ") + qk::isa_name(isa);
  const char* wait = std::getenv("OMP_WAIT_POLICY");
  fmt::print("qforge_bench_gemv: kernels {} (supported: {}), {} threads (at::parallel_for over "
             "output tiles), OMP_WAIT_POLICY={}, median of {} calls\n",
             qk::isa_name(qk::active_isa()), isas, at::get_num_threads(), wait ? wait : "unset",
             o.reps);

  const double copy_1t = memcpy_bandwidth(7, false);
  const double copy_nt = memcpy_bandwidth(7, true);
  const double read_nt = read_bandwidth(7);
  const double copy_bw = std::max(copy_1t, copy_nt);
  fmt::print("memcpy 256 MiB: {:.2f} GB/s copied with 1 thread, {:.2f} GB/s with {}; reference "
             "= {:.2f} GB/s (read+write traffic {:.2f} GB/s); read-only stream {:.2f} GB/s\n\n",
             copy_1t, copy_nt, at::get_num_threads(), copy_bw, 2 * copy_bw, read_nt);

  struct Config {
    int bits;
    int64_t group;
    bool act_order;
  };
  const std::vector<Config> configs = {
      {4, 128, false}, {4, 128, true}, {3, 128, false}, {2, 128, false}, {8, 128, false}};
  fmt::print("batch 1, y = x Wᵀ, W [out x in]; qforge = packed kernel incl. staging x; "
             "fp32 = faster of LibTorch at::mm / at::mv;\nGB/s = packed bytes (codes + scales + "
             "zero points as the kernel stores them) per second; % of the memcpy reference and "
             "of the read-only stream\n");
  fmt::print("{:<13} {:<16} {:>9} {:>10} {:>10} {:>8} {:>8} {:>9} {:>7}\n", "W", "format", "MB",
             "qforge ms", "fp32 ms", "speedup", "GB/s", "% memcpy", "% read");
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {11008, 4096}};
  std::vector<double> fp32_ms, grid4_ms;  // per shape, for the DBF table
  for (const auto& shape : shapes) {
    const int64_t out = shape.first, in = shape.second;
    const Fp32 fp = time_fp32(out, in, 1, o.reps);
    fp32_ms.push_back(fp.best() * 1e3);
    for (const Config& c : configs) {
      const auto m = copies_of(random_matrix(c.bits, out, in, c.group, c.act_order, 7));
      const double t = time_kernel(m, 1, o.reps, true);
      if (c.bits == 4 && !c.act_order) grid4_ms.push_back(t * 1e3);
      const double mb = static_cast<double>(m[0].packed_bytes()) / 1e6;
      const double gbs = mb / 1e3 / t;
      fmt::print("{:<13} {:<16} {:>9.2f} {:>10.3f} {:>10.3f} {:>7.2f}x {:>8.2f} {:>8.0f}% {:>6.0f}%\n",
                 fmt::format("{}x{}", out, in),
                 fmt::format("{}-bit g{}{}", c.bits, c.group, c.act_order ? " act" : ""), mb,
                 t * 1e3, fp.best() * 1e3, fp.best() / t, gbs, 100 * gbs / copy_bw,
                 100 * gbs / read_nt);
    }
    fmt::print("{:<13} {:<16} {:>9.2f} {:>10} {:>10.3f}   (at::mm {:.3f} ms, at::mv {:.3f} ms)\n",
               fmt::format("{}x{}", out, in), "fp32", out * in * 4 / 1e6, "", fp.best() * 1e3,
               fp.mm * 1e3, fp.mv * 1e3);
  }

  fmt::print("\nDBF (org.qforge.dbf/1), batch 1: y = s4 ⊙ (S_A · (s2 ⊙ (S_B · (s0 ⊙ x)))) "
             "through the sign kernels incl. staging; bpw = sign-plane bits per weight (k = "
             "bpw·out·in/(out+in)); GB/s = sign planes + float32 scales as the kernels read them; "
             "fp32 and 4-bit g128 as above, from this run\n");
  fmt::print("{:<13} {:<18} {:>9} {:>10} {:>10} {:>8} {:>10} {:>8} {:>9}\n", "W", "format", "MB",
             "qforge ms", "fp32 ms", "vs fp32", "vs 4-bit", "GB/s", "% memcpy");
  for (size_t s = 0; s < shapes.size(); ++s) {
    const int64_t out = shapes[s].first, in = shapes[s].second;
    for (double bits : {1.0, 1.5, 2.0}) {
      const auto m = dbf_copies(bits, out, in);
      const double t = time_dbf(m, 1, o.reps, true) * 1e3;
      const double mb = static_cast<double>(m[0].packed_bytes()) / 1e6;
      fmt::print("{:<13} {:<18} {:>9.2f} {:>10.3f} {:>10.3f} {:>7.2f}x {:>9.2f}x {:>8.2f} {:>8.0f}%\n",
                 fmt::format("{}x{}", out, in),
                 fmt::format("DBF {:.1f} bpw k={}", bits, m[0].plane(0).rows()), mb, t,
                 fp32_ms[s], fp32_ms[s] / t, grid4_ms[s] / t, mb / t, 100 * mb / t / copy_bw);
    }
  }

  fmt::print("\nQuIP (org.qforge.quip/1), batch 1: y = Uᵀ·(Q̂·(V·(x ⊘ s))) with randomized "
             "Hadamard transforms U, V (11008 = 32·344: a Paley base of order 344) around the "
             "packed GEMV of Q̂ (g128), against that GEMV alone and fp32 from this run\n");
  fmt::print("{:<13} {:<10} {:>10} {:>12} {:>10} {:>10} {:>9}\n", "W", "bits", "QuIP ms",
             "GEMV ms", "fp32 ms", "QuIP/GEMV", "vs fp32");
  for (size_t s = 0; s < shapes.size(); ++s) {
    const int64_t out = shapes[s].first, in = shapes[s].second;
    for (int bits : {2, 4}) {
      const auto m = copies_of(random_matrix(bits, out, in, 128, false, 13));
      const double tq = time_quip(m, o.reps) * 1e3, tg = time_kernel(m, 1, o.reps, true) * 1e3;
      fmt::print("{:<13} {:<10} {:>10.3f} {:>12.3f} {:>10.3f} {:>9.2f}x {:>8.2f}x\n",
                 fmt::format("{}x{}", out, in), fmt::format("{}-bit", bits), tq, tg, fp32_ms[s],
                 tq / tg, fp32_ms[s] / tq);
    }
  }

  if (o.batches) {
    fmt::print("\nbatches, 4096x4096 DBF 1.5 bpw: ms per call (forward uses the sign kernels up "
               "to {} rows, unpack + GEMM above)\n", qk::aten::kSignKernelMaxRows);
    fmt::print("{:>5} {:>10} {:>14} {:>10}\n", "rows", "kernel", "unpack+GEMM", "fp32 mm");
    const auto d = dbf_copies(1.5, 4096, 4096);
    for (int64_t rows : {1, 4, 8, 16, 32, 64, 128, 512}) {
      const int reps = rows <= 16 ? o.reps : std::max(3, o.reps / 4);
      const double tk = time_dbf(d, rows, reps, true);
      const double tg = time_dbf(d, rows, reps, false);
      const Fp32 fp = time_fp32(4096, 4096, rows, reps);
      fmt::print("{:>5} {:>10.3f} {:>14.3f} {:>10.3f}\n", rows, tk * 1e3, tg * 1e3, fp.mm * 1e3);
    }
  }

  if (o.batches) {
    fmt::print("\nbatches, 4096x4096 4-bit g128: ms per call (forward uses the kernel up "
               "to {} rows, dequantize + GEMM above; fp32 mm = LibTorch on a float32 W)\n",
               qk::aten::kGemvMaxRows);
    fmt::print("{:>5} {:>10} {:>14} {:>10}\n", "rows", "kernel", "dequant+GEMM", "fp32 mm");
    const auto m = copies_of(random_matrix(4, 4096, 4096, 128, false, 9));
    for (int64_t rows : {1, 2, 4, 8, 9, 16, 32, 64, 128, 256, 512}) {
      const int reps = rows <= 16 ? o.reps : std::max(3, o.reps / 4);
      const double tk = time_kernel(m, rows, reps, true);
      const double tg = time_kernel(m, rows, reps, false);
      const Fp32 fp = time_fp32(4096, 4096, rows, reps);
      fmt::print("{:>5} {:>10.3f} {:>14.3f} {:>10.3f}\n", rows, tk * 1e3, tg * 1e3, fp.mm * 1e3);
    }
  }
  return 0;
}
