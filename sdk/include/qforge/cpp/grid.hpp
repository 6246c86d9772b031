// Optional header-only helper: the uniform min/max grid of the GPTQ reference
// implementation (Frantar et al., quant.py, class Quantizer, perchannel=True)
// for one output row and one group of inputs, its mse clip search, and the
// bits / group_size / sym parameters of a quantizer that uses it. Needs the
// LibTorch headers (c10::Half), not its libraries.
//
//   xmin = min(0, min w)             xmax = max(0, max w)
//   sym:  xmax = max(|xmin|, xmax);  xmin = −xmax when xmin < 0
//   xmin == xmax == 0:  xmin = −1, xmax = 1
//   scale = (xmax − xmin) / maxq,    maxq = 2^bits − 1
//   zero  = sym ? (maxq + 1) / 2 : round(−xmin / scale)
//   q     = clamp(round(w / scale) + zero, 0, maxq),  ŵ = scale · (q − zero)
//
// in float32, round() being round-half-to-even (torch.round). Like the
// reference, a symmetric group whose weights are all >= 0 keeps xmin = 0 and
// so only uses the codes >= zero. What a packed format cannot store is said in
// the Spec and applied before the grid is used, so that a method that
// compensates errors (GPTQ) compensates for it too.
#ifndef QFORGE_CPP_GRID_HPP
#define QFORGE_CPP_GRID_HPP

#include <c10/util/Half.h>
#include <qforge/cpp/plugin.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

namespace qforge::grid {

struct Spec {
  int bits = 4;
  bool sym = true;
  // quant.py's mse=True: shrink [xmin, xmax] by p = 1 − k/100, k = 0..79, and
  // keep the grid with the least Σ|ŵ − w|^2.4 over the group.
  bool mse = false;
  // The format stores float16 scales: the scale is rounded to float16 (a
  // scale below its smallest subnormal, 2^-24, is raised to it), so the
  // dequantized weight is what a reader of the format computes.
  bool half_scales = false;
  // Asymmetric zero points are clamped to [zero_min, maxq] (AutoGPTQ v1
  // stores zero − 1, so 1 there) rather than wrapping around.
  float zero_min = 0.f;

  float maxq() const { return static_cast<float>((1 << bits) - 1); }
};

// The grid of one output row within one group.
struct Grid {
  float scale;  // > 0
  float zero;   // an integer in [0, maxq]
};

// quant.py's quantize(), split in two: the integer code of w, and its value.
inline float code_of(float w, const Grid& g, float maxq) {
  return std::min(std::max(std::nearbyint(w / g.scale) + g.zero, 0.f), maxq);
}
inline float value_of(float q, const Grid& g) { return g.scale * (q - g.zero); }

// The grid spanning [xmin, xmax] (xmin <= 0 <= xmax, not both 0).
inline Grid grid_for(float xmin, float xmax, const Spec& s) {
  const float maxq = s.maxq();
  float scale = (xmax - xmin) / maxq;
  float zero = s.sym ? (maxq + 1) / 2 : std::nearbyint(-xmin / scale);
  if (!s.sym) zero = std::min(std::max(zero, s.zero_min), maxq);
  if (s.half_scales) {
    constexpr float kMinHalf = 5.9604645e-08f;  // 2^-24, float16's smallest subnormal
    scale = std::max(static_cast<float>(c10::Half(scale)), kMinHalf);
  }
  return Grid{scale, zero};
}

// Σ |ŵ − w|^2.4 over x[0..n), the mse search's norm.
inline double grid_error(const float* x, int64_t n, const Grid& g, float maxq) {
  constexpr float kNorm = 2.4f;
  double sum = 0;
  for (int64_t j = 0; j < n; ++j)
    sum += std::pow(std::fabs(value_of(code_of(x[j], g, maxq), g) - x[j]), kNorm);
  return sum;
}

// Quantizer.find_params() for one row of one group, x[0..n). NaN inputs are
// the caller's to reject first.
inline Grid find_params(const float* x, int64_t n, const Spec& s) {
  float xmin = 0.f, xmax = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    xmin = std::min(xmin, x[j]);
    xmax = std::max(xmax, x[j]);
  }
  if (s.sym) {
    xmax = std::max(-xmin, xmax);
    if (xmin < 0.f) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
  Grid best = grid_for(xmin, xmax, s);
  if (!s.mse) return best;
  constexpr int kGrid = 100, kSteps = 80;  // the reference's grid = 100, maxshrink = 0.8
  double best_error = std::numeric_limits<double>::infinity();
  for (int k = 0; k < kSteps; ++k) {
    const float p = static_cast<float>(1.0 - static_cast<double>(k) / kGrid);
    const Grid g = grid_for(p * xmin, p * xmax, s);
    const double e = grid_error(x, n, g, s.maxq());
    if (e < best_error) {
      best_error = e;
      best = g;
    }
  }
  return best;
}

// Round to nearest on the grid of every group of `group_size` inputs of one
// row x[0..n) (the last group may be shorter): the dequantized values to
// out[0..n), as RTN computes them.
inline void round_row(const float* x, int64_t n, int64_t group_size, const Spec& s, float* out) {
  for (int64_t j0 = 0; j0 < n; j0 += group_size) {
    const int64_t len = std::min(group_size, n - j0);
    const Grid g = find_params(x + j0, len, s);
    for (int64_t j = j0; j < j0 + len; ++j) out[j] = value_of(code_of(x[j], g, s.maxq()), g);
  }
}

// ---------------------------------------------------------------------------
// The parameters of a quantizer that uses the grid
// ---------------------------------------------------------------------------

inline qforge_param_desc bits_param(const char* help = "bits per weight code (2..8)") {
  return param_range(QFORGE_PARAM_INT, "bits", help, "4", 2, 8);
}
inline qforge_param_desc group_size_param() {
  return param_range(QFORGE_PARAM_INT, "group_size",
                     "input columns sharing one scale/zero; -1 = one group per output channel "
                     "(per-channel); 0 is invalid",
                     "128", -1, 1048576);
}
inline qforge_param_desc sym_param(
    const char* help =
        "symmetric grid with a fixed zero point (true) or asymmetric min/max "
        "with a per-group zero point (false)") {
  return param(QFORGE_PARAM_BOOL, "sym", help, "true");
}

// "bits", checked against the packable widths.
inline int bits(const Params& params) {
  const int64_t bits = params.get_int("bits");
  if (bits < 2 || bits > 8) invalid_argument("bits must be in [2, 8], got " + std::to_string(bits));
  return static_cast<int>(bits);
}

// "group_size" as the effective number of input columns per group
// (in_features for -1, one group per output channel).
inline int64_t group_size(const Params& params, int64_t in_features) {
  const int64_t group_size = params.get_int("group_size");
  if (group_size == 0 || group_size < -1)
    invalid_argument(
        "group_size must be -1 (one group per output channel) or a positive "
        "number of input columns, got " +
        std::to_string(group_size));
  return group_size == -1 ? in_features : group_size;
}

}  // namespace qforge::grid

#endif  // QFORGE_CPP_GRID_HPP
