// SignPlane and SignChain (sign_chain.hpp): repacking, staging, the chain's
// products and their gradients, and dispatch to the per-ISA sign kernel.
#include <qforge_kernels/sign_chain.hpp>

#include "dispatch.hpp"

#include <algorithm>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>

namespace qforge::kernels {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("SignChain: " + message);
}

// Bit 7 − t of a byte moved to bit t.
struct Reverse {
  uint8_t r[256] = {};
  constexpr Reverse() {
    for (int b = 0; b < 256; ++b)
      for (int t = 0; t < 8; ++t)
        if (b & (0x80 >> t)) r[b] = static_cast<uint8_t>(r[b] | (1 << t));
  }
};
constexpr Reverse kReverse;

// The eight signs of a byte of a plane's words (bit t = input t) as floats.
struct ByteSigns {
  float f[256][8] = {};
  constexpr ByteSigns() {
    for (int b = 0; b < 256; ++b)
      for (int t = 0; t < 8; ++t) f[b][t] = (b >> t) & 1 ? 1.0f : -1.0f;
  }
};
constexpr ByteSigns kByteSigns;

// Rows [0, n) split into tasks of about 64 KiB of bits each.
void for_rows(const ParallelFor& parallel, const SignPlane& p,
              const std::function<void(int64_t, int64_t)>& f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (p.words() * 8));
  const int64_t tasks = (p.rows() + grain - 1) / grain;
  auto run = [&](int64_t t0, int64_t t1) { f(t0 * grain, std::min(p.rows(), t1 * grain)); };
  if (parallel && tasks > 1)
    parallel(0, tasks, run);
  else
    run(0, tasks);
}

}  // namespace

// ---------------------------------------------------------------------------
// SignPlane
// ---------------------------------------------------------------------------

SignPlane::SignPlane(const uint8_t* msb_rows, int64_t rows, int64_t cols)
    : rows_(rows), cols_(cols), words_((cols + kWord - 1) / kWord) {
  if (rows < 1 || cols < 1) bad("a sign plane needs rows and columns >= 1");
  if (msb_rows == nullptr) bad("no sign bits");
  bits_.assign(static_cast<size_t>(rows * words_), 0);
  const int64_t row_bytes = (cols + 7) / 8;
  for (int64_t o = 0; o < rows; ++o) {
    const uint8_t* src = msb_rows + o * row_bytes;
    uint64_t* dst = bits_.data() + o * words_;
    for (int64_t b = 0; b < row_bytes; ++b)
      dst[b / 8] |= static_cast<uint64_t>(kReverse.r[src[b]]) << (8 * (b % 8));
    if (cols % kWord != 0) dst[words_ - 1] &= (uint64_t{1} << (cols % kWord)) - 1;  // padding 0
  }
}

SignPlane SignPlane::transposed() const {
  SignPlane t;
  t.rows_ = cols_;
  t.cols_ = rows_;
  t.words_ = (rows_ + kWord - 1) / kWord;
  t.bits_.assign(static_cast<size_t>(t.rows_ * t.words_), 0);
  for (int64_t o = 0; o < rows_; ++o)
    for (int64_t j = 0; j < cols_; ++j)
      if ((bits_[o * words_ + j / kWord] >> (j % kWord)) & 1)
        t.bits_[j * t.words_ + o / kWord] |= uint64_t{1} << (o % kWord);
  return t;
}

void SignPlane::unpack(int64_t o0, int64_t o1, float* dst, int64_t ld) const {
  const int64_t whole = cols_ / 8;  // whole bytes of a row
  for (int64_t o = o0; o < o1; ++o) {
    const uint64_t* w = bits_.data() + o * words_;
    float* d = dst + (o - o0) * ld;
    for (int64_t b = 0; b < whole; ++b)
      std::memcpy(d + 8 * b, kByteSigns.f[(w[b / 8] >> (8 * (b % 8))) & 0xFFu], 8 * sizeof(float));
    for (int64_t j = 8 * whole; j < cols_; ++j) d[j] = (w[j / kWord] >> (j % kWord)) & 1 ? 1.0f : -1.0f;
  }
}

std::vector<uint8_t> SignPlane::msb_rows() const {
  const int64_t row_bytes = (cols_ + 7) / 8;
  std::vector<uint8_t> out(static_cast<size_t>(rows_ * row_bytes), 0xFF);
  for (int64_t o = 0; o < rows_; ++o)
    for (int64_t j = 0; j < cols_; ++j)
      if (!((bits_[o * words_ + j / kWord] >> (j % kWord)) & 1))
        out[o * row_bytes + j / 8] &= static_cast<uint8_t>(~(0x80u >> (j % 8)));
  return out;
}

void SignPlane::stage(const float* x, int64_t rows, int64_t ldx, const float* scale,
                      Staged& s) const {
  s.rows = rows;
  s.ld = words_ * kWord;
  s.x.assign(static_cast<size_t>(rows * s.ld), 0.0f);
  s.sums.assign(static_cast<size_t>(rows), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = x + r * ldx;
    float* dst = s.x.data() + r * s.ld;
    float sum = 0.0f;
    for (int64_t j = 0; j < cols_; ++j) {
      dst[j] = scale != nullptr ? src[j] * scale[j] : src[j];
      sum += dst[j];
    }
    s.sums[r] = sum;
  }
}

void SignPlane::gemm(const Staged& x, int64_t o0, int64_t o1, float* y, int64_t ldy,
                     const float* scale, const float* bias, Isa isa) const {
  if (x.ld != words_ * kWord) bad("input staged for another plane");
  if (o0 < 0 || o1 > rows_ || o0 > o1) bad("output range out of bounds");
  const detail::SignView v{bits_.data(), words_};
  const detail::SignCall c{x.rows, x.x.data(), x.ld, x.sums.data(), y, ldy, scale, bias};
  detail::kernels_for(isa).sign_gemm(v, c, o0, o1);
}

// ---------------------------------------------------------------------------
// SignChain
// ---------------------------------------------------------------------------

SignChain::SignChain(std::vector<SignPlane> planes, std::vector<std::vector<float>> scales,
                     std::vector<float> bias)
    : planes_(std::move(planes)), scales_(std::move(scales)), bias_(std::move(bias)) {
  if (planes_.empty()) bad("no sign plane");
  if (scales_.size() != planes_.size() + 1)
    bad(std::to_string(planes_.size()) + " planes need " + std::to_string(planes_.size() + 1) +
        " scale vectors, got " + std::to_string(scales_.size()));
  for (size_t l = 0; l < planes_.size(); ++l) {
    if (planes_[l].rows() < 1) bad("an empty sign plane");
    if (l > 0 && planes_[l].cols() != planes_[l - 1].rows())
      bad("plane " + std::to_string(l) + " has " + std::to_string(planes_[l].cols()) +
          " columns, the plane before it " + std::to_string(planes_[l - 1].rows()) + " rows");
  }
  for (size_t l = 0; l < scales_.size(); ++l) {
    const int64_t want = l == 0 ? planes_[0].cols() : planes_[l - 1].rows();
    if (static_cast<int64_t>(scales_[l].size()) != want)
      bad("scale vector " + std::to_string(l) + " has " + std::to_string(scales_[l].size()) +
          " entries, not " + std::to_string(want));
  }
  if (!bias_.empty() && static_cast<int64_t>(bias_.size()) != out_features())
    bad("bias has " + std::to_string(bias_.size()) + " entries, not " +
        std::to_string(out_features()));
}

void SignChain::set_scale(size_t l, const float* values) {
  std::copy(values, values + scales_.at(l).size(), scales_[l].begin());
}

size_t SignChain::packed_bytes() const {
  size_t n = 0;
  for (const SignPlane& p : planes_) n += p.packed_bytes();
  for (const auto& s : scales_) n += s.size() * sizeof(float);
  return n;
}

namespace {

// One plane's product over its rows, in parallel.
void plane_gemm(const SignPlane& p, const SignPlane::Staged& in, float* y, int64_t ldy,
                const float* scale, const float* bias, const ParallelFor& parallel, Isa isa) {
  for_rows(parallel, p, [&](int64_t o0, int64_t o1) { p.gemm(in, o0, o1, y, ldy, scale, bias, isa); });
}

// y = s_L ⊙ (P_L · ( … s_1 ⊙ (P_1 · (s_0 ⊙ x)))) + bias for planes P and
// scales s in the order given; keeps each plane's unscaled product in
// `products` when it is not null.
void run_chain(const std::vector<const SignPlane*>& planes,
               const std::vector<const float*>& scales, const float* bias, const float* x,
               int64_t rows, int64_t ldx, float* y, int64_t ldy, const ParallelFor& parallel,
               Isa isa, std::vector<std::vector<float>>* products) {
  SignPlane::Staged staged;
  planes[0]->stage(x, rows, ldx, scales[0], staged);
  std::vector<float> between;
  for (size_t l = 0; l < planes.size(); ++l) {
    const SignPlane& p = *planes[l];
    const bool last = l + 1 == planes.size();
    if (products != nullptr) {  // z = P · a unscaled, then scaled into y or `between`
      std::vector<float>& z = (*products)[l];
      z.assign(static_cast<size_t>(rows * p.rows()), 0.0f);
      plane_gemm(p, staged, z.data(), p.rows(), nullptr, nullptr, parallel, isa);
      if (!last) between.assign(z.size(), 0.0f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < p.rows(); ++o) {
          const float v = z[r * p.rows() + o] * scales[l + 1][o];
          if (!last)
            between[r * p.rows() + o] = v;
          else
            y[r * ldy + o] = bias != nullptr ? v + bias[o] : v;
        }
    } else if (last) {
      plane_gemm(p, staged, y, ldy, scales[l + 1], bias, parallel, isa);
    } else {
      between.assign(static_cast<size_t>(rows * p.rows()), 0.0f);
      plane_gemm(p, staged, between.data(), p.rows(), scales[l + 1], nullptr, parallel, isa);
    }
    if (!last) planes[l + 1]->stage(between.data(), rows, p.rows(), nullptr, staged);
  }
}

}  // namespace

void SignChain::forward(const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy,
                        const ParallelFor& parallel, Isa isa) const {
  if (rows <= 0) return;
  std::vector<const SignPlane*> planes;
  std::vector<const float*> scales{scales_[0].data()};
  for (size_t l = 0; l < planes_.size(); ++l) {
    planes.push_back(&planes_[l]);
    scales.push_back(scales_[l + 1].data());
  }
  run_chain(planes, scales, bias_.empty() ? nullptr : bias_.data(), x, rows, ldx, y, ldy,
            parallel, isa, nullptr);
}

const std::vector<SignPlane>& SignChain::transposes() const {
  std::call_once(*transposed_once_, [&] {
    for (const SignPlane& p : planes_) transposed_.push_back(p.transposed());
  });
  return transposed_;
}

void SignChain::backward_input(const float* gy, int64_t rows, int64_t ldgy, float* gx,
                               int64_t ldgx, const ParallelFor& parallel) const {
  if (rows <= 0) return;
  const std::vector<SignPlane>& t = transposes();
  std::vector<const SignPlane*> planes;
  std::vector<const float*> scales{scales_.back().data()};
  for (size_t l = planes_.size(); l-- > 0;) {
    planes.push_back(&t[l]);
    scales.push_back(scales_[l].data());
  }
  run_chain(planes, scales, nullptr, gy, rows, ldgy, gx, ldgx, parallel, active_isa(), nullptr);
}

// With a_0 = s_0 ⊙ x, z_l = P_l · a_(l−1)... in the chain's order:
//   z_l = S_l · a_l,  a_(l+1) = s_(l+1) ⊙ z_l,  y = a_L (+ bias),
// so with g = ∂L/∂a_(l+1): ∂L/∂s_(l+1) = Σ_r g ⊙ z_l, then ∂L/∂a_l = S_lᵀ (s_(l+1) ⊙ g),
// and finally ∂L/∂s_0 = Σ_r (∂L/∂a_0) ⊙ x.
void SignChain::backward_scales(const float* x, int64_t ldx, const float* gy, int64_t ldgy,
                                int64_t rows, float* const* grads,
                                const ParallelFor& parallel) const {
  if (rows <= 0) return;
  const Isa isa = active_isa();
  const size_t L = planes_.size();
  std::vector<std::vector<float>> z(L);
  {
    std::vector<const SignPlane*> planes;
    std::vector<const float*> scales{scales_[0].data()};
    for (size_t l = 0; l < L; ++l) {
      planes.push_back(&planes_[l]);
      scales.push_back(scales_[l + 1].data());
    }
    std::vector<float> y(static_cast<size_t>(rows * out_features()));
    run_chain(planes, scales, nullptr, x, rows, ldx, y.data(), out_features(), parallel, isa, &z);
  }
  const std::vector<SignPlane>& t = transposes();
  // g = ∂L/∂a_L, [rows][n_L]
  std::vector<float> g(static_cast<size_t>(rows * out_features()));
  for (int64_t r = 0; r < rows; ++r)
    std::copy(gy + r * ldgy, gy + r * ldgy + out_features(), g.begin() + r * out_features());
  SignPlane::Staged staged;
  for (size_t l = L; l-- > 0;) {
    const int64_t n = planes_[l].rows(), m = planes_[l].cols();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < n; ++o) grads[l + 1][o] += g[r * n + o] * z[l][r * n + o];
    t[l].stage(g.data(), rows, n, scales_[l + 1].data(), staged);
    std::vector<float> next(static_cast<size_t>(rows * m));
    plane_gemm(t[l], staged, next.data(), m, nullptr, nullptr, parallel, isa);
    g.swap(next);
  }
  const int64_t in = in_features();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) grads[0][i] += g[r * in + i] * x[r * ldx + i];
}

}  // namespace qforge::kernels
