// Hadamard matrices (Sylvester, Paley I and II over GF(p^k)) and the
// randomized Hadamard transform (hadamard.hpp); the butterflies and the base
// product run in the per-ISA units (hadamard_body.inc).
#include <qforge_kernels/hadamard.hpp>

#include "dispatch.hpp"

#include <cmath>
#include <random>
#include <stdexcept>
#include <string>

namespace qforge::kernels {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("RandomizedHadamard: " + message);
}

bool is_prime(int64_t p) {
  if (p < 2) return false;
  for (int64_t d = 2; d * d <= p; ++d)
    if (p % d == 0) return false;
  return true;
}

// GF(q), q = p^k with k ≤ 3: an element is its polynomial's coefficients in
// base p; a polynomial of degree 2 or 3 without roots is irreducible.
class Field {
 public:
  // False when q is not such a prime power.
  bool init(int64_t q) {
    for (p_ = 2; p_ <= q; ++p_)
      if (q % p_ == 0) break;
    if (!is_prime(p_)) return false;
    k_ = 0;
    for (int64_t v = q; v > 1; v /= p_) {
      if (v % p_ != 0) return false;
      ++k_;
    }
    if (k_ > 3) return false;
    q_ = q;
    if (k_ > 1) {  // the first monic polynomial of degree k without a root
      for (int64_t c = 0; c < q_; ++c) {
        bool root = false;
        for (int64_t x = 0; x < p_ && !root; ++x) {
          int64_t v = 1;  // x^k + c_(k−1) x^(k−1) + … + c_0, Horner
          for (int64_t i = k_ - 1; i >= 0; --i) v = (v * x + digit(c, i)) % p_;
          root = v == 0;
        }
        if (!root) {
          poly_ = c;
          break;
        }
      }
    }
    return true;
  }
  int64_t size() const { return q_; }
  int64_t sub(int64_t a, int64_t b) const {
    int64_t r = 0, w = 1;
    for (int64_t i = 0; i < k_; ++i, w *= p_) r += ((digit(a, i) - digit(b, i) + p_) % p_) * w;
    return r;
  }
  int64_t mul(int64_t a, int64_t b) const {
    std::vector<int64_t> c(static_cast<size_t>(2 * k_), 0);
    for (int64_t i = 0; i < k_; ++i)
      for (int64_t j = 0; j < k_; ++j) c[i + j] = (c[i + j] + digit(a, i) * digit(b, j)) % p_;
    for (int64_t d = 2 * k_ - 2; d >= k_; --d)  // x^k = −(c_(k−1) x^(k−1) + … + c_0)
      for (int64_t i = 0; i < k_; ++i)
        c[d - k_ + i] = (c[d - k_ + i] + (p_ - c[d]) * digit(poly_, i)) % p_;
    int64_t r = 0, w = 1;
    for (int64_t i = 0; i < k_; ++i, w *= p_) r += c[i] * w;
    return r;
  }
  // χ(x): 0 for 0, 1 for a non-zero square, −1 otherwise.
  std::vector<int> characters() const {
    std::vector<int> chi(static_cast<size_t>(q_), -1);
    chi[0] = 0;
    for (int64_t x = 1; x < q_; ++x) chi[mul(x, x)] = 1;
    return chi;
  }

 private:
  int64_t digit(int64_t a, int64_t i) const {
    for (int64_t t = 0; t < i; ++t) a /= p_;
    return a % p_;
  }
  int64_t p_ = 0, k_ = 0, q_ = 0, poly_ = 0;
};

// Paley I: r = q + 1, q ≡ 3 (mod 4). With the Jacobsthal matrix Q_ij = χ(x_i − x_j)
// (skew), H = I + [[0, 1ᵀ], [−1, Q]].
std::vector<float> paley1(const Field& f) {
  const int64_t q = f.size(), r = q + 1;
  const std::vector<int> chi = f.characters();
  std::vector<float> h(static_cast<size_t>(r * r));
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      int s;
      if (i == 0)
        s = j == 0 ? 0 : 1;
      else if (j == 0)
        s = -1;
      else
        s = chi[f.sub(i - 1, j - 1)];
      h[i * r + j] = static_cast<float>(s + (i == j ? 1 : 0));
    }
  return h;
}

// Paley II: r = 2 (q + 1), q ≡ 1 (mod 4). C = [[0, 1ᵀ], [1, Q]] (symmetric);
// each 0 of C becomes [[1, −1], [−1, −1]], each ±1 becomes ±[[1, 1], [1, −1]].
std::vector<float> paley2(const Field& f) {
  const int64_t q = f.size(), c = q + 1, r = 2 * c;
  const std::vector<int> chi = f.characters();
  std::vector<float> h(static_cast<size_t>(r * r));
  for (int64_t i = 0; i < c; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const int s = i == 0 ? (j == 0 ? 0 : 1) : (j == 0 ? 1 : chi[f.sub(i - 1, j - 1)]);
      const int b[2][2] = {{s == 0 ? 1 : s, s == 0 ? -1 : s}, {s == 0 ? -1 : s, s == 0 ? -1 : -s}};
      for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 2; ++v) h[(2 * i + u) * r + 2 * j + v] = static_cast<float>(b[u][v]);
    }
  return h;
}

}  // namespace

std::vector<float> hadamard_matrix(int64_t r) {
  if (r < 1 || r > kMaxHadamardBase) return {};
  if ((r & (r - 1)) == 0) {  // Sylvester: H_ij = (−1)^popcount(i & j)
    std::vector<float> h(static_cast<size_t>(r * r));
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < r; ++j) h[i * r + j] = __builtin_popcountll(i & j) % 2 ? -1.f : 1.f;
    return h;
  }
  Field f;
  if (r % 4 == 0 && f.init(r - 1) && (r - 1) % 4 == 3) return paley1(f);
  if (r % 4 == 0 && f.init(r / 2 - 1) && (r / 2 - 1) % 4 == 1) return paley2(f);
  return {};
}

std::vector<float> random_orthogonal(int64_t r, uint64_t seed) {
  if (r < 1 || r > detail::kMaxBase) bad("random_orthogonal: order must be in [1, 1024]");
  std::mt19937_64 rng(seed);
  std::vector<double> q(static_cast<size_t>(r * r));
  for (double& v : q) {
    double sum = 0;
    for (int t = 0; t < 12; ++t) sum += static_cast<double>(rng() >> 11) * 0x1.0p-53;
    v = sum - 6.0;
  }
  for (int64_t i = 0; i < r; ++i) {
    double* qi = q.data() + i * r;
    for (int64_t j = 0; j < i; ++j) {
      const double* qj = q.data() + j * r;
      double d = 0;
      for (int64_t k = 0; k < r; ++k) d += qi[k] * qj[k];
      for (int64_t k = 0; k < r; ++k) qi[k] -= d * qj[k];
    }
    double norm = 0;
    for (int64_t k = 0; k < r; ++k) norm += qi[k] * qi[k];
    norm = std::sqrt(norm);
    for (int64_t k = 0; k < r; ++k) qi[k] /= norm;
  }
  return std::vector<float>(q.begin(), q.end());
}

bool hadamard_built_in(int64_t r) { return !hadamard_matrix(r).empty(); }

HadamardSplit hadamard_split(int64_t n) {
  if (n < 1) return {};
  int64_t pow2 = 1;
  while (n % (pow2 * 2) == 0) pow2 *= 2;
  for (; pow2 >= 1; pow2 /= 2)
    if (hadamard_built_in(n / pow2)) return {pow2, n / pow2};
  return {};
}

RandomizedHadamard::RandomizedHadamard(int64_t pow2, int64_t r, std::vector<float> signs,
                                       std::vector<float> base)
    : pow2_(pow2), base_order_(r), signs_(std::move(signs)), base_(std::move(base)) {
  if (pow2 < 1 || (pow2 & (pow2 - 1)) != 0) bad(std::to_string(pow2) + " is not a power of two");
  if (r < 1 || r > detail::kMaxBase) bad("base order must be in [1, 1024]");
  if (static_cast<int64_t>(signs_.size()) != pow2 * r)
    bad(std::to_string(signs_.size()) + " signs for size " + std::to_string(pow2 * r));
  for (float s : signs_)
    if (s != 1.f && s != -1.f) bad("signs must be +1 or -1");
  if (r == 1) {
    base_.clear();
  } else {
    if (static_cast<int64_t>(base_.size()) != r * r)
      bad("the base must be " + std::to_string(r) + " x " + std::to_string(r));
    base_t_.resize(base_.size());
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < r; ++j) base_t_[j * r + i] = base_[i * r + j];
  }
}

void RandomizedHadamard::apply(float* x, int64_t rows, int64_t ld, bool transpose, Isa isa) const {
  // T x = (H ⊗ B)(D x)/√p: signs, base (out_j = Σ_k x_k Bᵀ[k][j]), butterflies, scale.
  // Tᵀ y = D (H ⊗ Bᵀ) y/√p: base (Σ_k y_k B[k][j]), butterflies, scale and signs.
  const detail::HadamardCall c{x,
                               rows,
                               ld,
                               pow2_,
                               base_order_,
                               base_order_ > 1 ? (transpose ? base_.data() : base_t_.data()) : nullptr,
                               transpose ? nullptr : signs_.data(),
                               transpose ? signs_.data() : nullptr,
                               1.0f / std::sqrt(static_cast<float>(pow2_))};
  detail::kernels_for(isa).hadamard(c);
}

std::vector<float> RandomizedHadamard::matrix() const {
  const int64_t n = size();
  std::vector<float> m(static_cast<size_t>(n * n), 0.f);
  for (int64_t i = 0; i < n; ++i) m[i * n + i] = 1.f;
  // Rows of the identity transformed: row i becomes (T e_i)ᵀ, i.e. Tᵀ; transpose back.
  apply(m.data(), n, n, false, Isa::kPortable);
  std::vector<float> t(m.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) t[j * n + i] = m[i * n + j];
  return t;
}

}  // namespace qforge::kernels
