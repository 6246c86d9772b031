// What the benchmarks share: medians of timed calls, and how many copies of a
// layer make a working set larger than the caches (so that every timed call
// reads its weights from memory, as decoding a large model does).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace qforge::bench {

using Clock = std::chrono::steady_clock;

// Bytes the timed calls cycle through: well beyond any last-level cache.
inline constexpr size_t kWorkingSet = size_t{256} << 20;

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Median seconds of f(k), k = call number, after `warm` untimed calls.
inline double time_median(int reps, int warm, const std::function<void(int)>& f) {
  for (int k = 0; k < warm; ++k) f(k);
  std::vector<double> t;
  for (int k = 0; k < reps; ++k) {
    const auto t0 = Clock::now();
    f(warm + k);
    t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return median(t);
}

// Copies of a `bytes`-sized layer that fill kWorkingSet.
inline size_t copies_for(size_t bytes) {
  return std::max<size_t>(1, (kWorkingSet + bytes - 1) / bytes);
}

// As the qforge CLI does: OMP_WAIT_POLICY=PASSIVE when it is unset, by
// re-executing the program (libgomp reads it when it is loaded). Call first
// in main.
inline void passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: carry on
  }
}

// The options of a kernel benchmark: --reps N (at least 3; `reps` when not
// given) and --threads N (0: every core), and the flags `extra` takes (it
// returns false for one it does not know). A bad command line prints
// `usage` and exits 2.
struct RunOptions {
  int reps = 0;
  int threads = 0;
  int thread_count() const {
    return threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  }
};

inline RunOptions parse_run_options(int argc, char** argv, int reps, const char* usage,
                                    const std::function<bool(const std::string&)>& extra = {}) {
  RunOptions o;
  o.reps = reps;
  for (int k = 1; k < argc; ++k) {
    const std::string a = argv[k];
    if ((a == "--reps" || a == "--threads") && k + 1 < argc) {
      (a == "--reps" ? o.reps : o.threads) = std::atoi(argv[++k]);
    } else if (!extra || !extra(a)) {
      std::fprintf(stderr, "usage: %s\n", usage);
      std::exit(2);
    }
  }
  o.reps = std::max(3, o.reps);
  return o;
}

}  // namespace qforge::bench
