// What the benchmarks share: medians of timed calls, and how many copies of a
// layer make a working set larger than the caches (so that every timed call
// reads its weights from memory, as decoding a large model does).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <functional>
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

}  // namespace qforge::bench
