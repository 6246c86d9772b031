// The Hadamard matrices (every built-in order is a Hadamard matrix), the
// splits n = 2^a · r, and the randomized Hadamard transform on every ISA this
// machine has against the explicit matrix (H_{2^a} ⊗ B) · diag(signs) / √(2^a),
// both directions, for powers of two and for Paley bases.
#include <qforge_kernels/hadamard.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace qk = qforge::kernels;
using qk::Isa;

TEST(Hadamard, EveryBuiltInOrderIsAHadamardMatrix) {
  std::string orders;
  int count = 0;
  for (int64_t r = 1; r <= qk::kMaxHadamardBase; ++r) {
    const std::vector<float> h = qk::hadamard_matrix(r);
    if (h.empty()) continue;
    ++count;
    if ((r & (r - 1)) != 0) orders += " " + std::to_string(r);
    std::vector<int32_t> v(h.size());
    for (size_t k = 0; k < h.size(); ++k) {
      ASSERT_TRUE(h[k] == 1.f || h[k] == -1.f) << "order " << r;
      v[k] = static_cast<int32_t>(h[k]);
    }
    for (int64_t i = 0; i < r; ++i)  // H Hᵀ = r I, in integers
      for (int64_t j = 0; j <= i; ++j) {
        int32_t dot = 0;
        for (int64_t k = 0; k < r; ++k) dot += v[i * r + k] * v[j * r + k];
        ASSERT_EQ(dot, i == j ? r : 0) << "order " << r << " rows " << i << ", " << j;
      }
  }
  std::printf("built-in orders besides powers of two:%s\n", orders.c_str());
  for (int64_t r : {12, 20, 28, 44, 60, 76, 108, 124, 344}) EXPECT_TRUE(qk::hadamard_built_in(r)) << r;
  for (int64_t r : {3, 6, 43, 92, 172}) EXPECT_FALSE(qk::hadamard_built_in(r)) << r;
  EXPECT_GT(count, 50);
}

TEST(Hadamard, Splits) {
  auto split = [](int64_t n) {
    const qk::HadamardSplit s = qk::hadamard_split(n);
    return std::make_pair(s.pow2, s.base);
  };
  EXPECT_EQ(split(4096), std::make_pair(int64_t{4096}, int64_t{1}));
  EXPECT_EQ(split(11008), std::make_pair(int64_t{32}, int64_t{344}));   // Llama-2 7B MLP
  EXPECT_EQ(split(14336), std::make_pair(int64_t{512}, int64_t{28}));   // Llama-3 8B MLP
  EXPECT_EQ(split(12288), std::make_pair(int64_t{1024}, int64_t{12}));
  EXPECT_EQ(split(172), std::make_pair(int64_t{0}, int64_t{0}));       // stories260K: no Hadamard
}

// T in double from its definition.
std::vector<double> explicit_transform(int64_t pow2, int64_t r, const std::vector<float>& signs,
                                       const std::vector<float>& base) {
  const int64_t n = pow2 * r;
  const std::vector<float> hp = qk::hadamard_matrix(pow2);
  std::vector<double> t(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      const double b = r == 1 ? 1.0 : base[(i % r) * r + j % r];
      t[i * n + j] = hp[(i / r) * pow2 + j / r] * b * signs[j] / std::sqrt(double(pow2));
    }
  return t;
}

TEST(Hadamard, TransformMatchesTheExplicitMatrixOnEveryIsa) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  const int64_t cases[][2] = {{1, 1}, {2, 1}, {16, 1}, {64, 1}, {256, 1}, {1, 12},
                              {4, 20}, {16, 28}, {2, 344}, {8, 60}};
  for (const auto& c : cases) {
    const int64_t pow2 = c[0], r = c[1], n = pow2 * r, rows = 3;
    std::vector<float> signs(static_cast<size_t>(n)), base;
    for (float& s : signs) s = rng() & 1 ? 1.f : -1.f;
    if (r > 1) {
      base = qk::hadamard_matrix(r);
      for (float& b : base) b /= std::sqrt(float(r));
    }
    const qk::RandomizedHadamard t(pow2, r, signs, base);
    const std::vector<double> want = explicit_transform(pow2, r, signs, base);
    std::vector<float> x(static_cast<size_t>(rows * (n + 5)));
    for (float& v : x) v = normal(rng);
    std::vector<float> first;
    for (Isa isa : qk::supported_isas()) {
      std::vector<float> y = x;
      t.apply(y.data(), rows, n + 5, false, isa);
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t o = 0; o < n; ++o) {
          double w = 0;
          for (int64_t j = 0; j < n; ++j) w += want[o * n + j] * x[i * (n + 5) + j];
          ASSERT_NEAR(y[i * (n + 5) + o], w, 1e-4 * (1 + std::sqrt(double(n))))
              << qk::isa_name(isa) << " n = " << pow2 << " x " << r << " row " << i << " out " << o;
        }
      for (int64_t i = 0; i < rows; ++i)  // the padding is left alone
        for (int64_t j = n; j < n + 5; ++j) ASSERT_EQ(y[i * (n + 5) + j], x[i * (n + 5) + j]);
      std::vector<float> back = y;  // Tᵀ T = I
      t.apply(back.data(), rows, n + 5, true, isa);
      for (size_t k = 0; k < x.size(); ++k) ASSERT_NEAR(back[k], x[k], 1e-4) << qk::isa_name(isa);
      if (r == 1) {  // butterflies only: the same bits on every ISA
        if (first.empty())
          first = y;
        else
          EXPECT_EQ(std::memcmp(first.data(), y.data(), y.size() * sizeof(float)), 0) << qk::isa_name(isa);
      }
    }
    const std::vector<float> m = t.matrix();
    for (size_t k = 0; k < m.size(); ++k) ASSERT_NEAR(m[k], want[k], 1e-5) << n;
  }
}

// Every built-in base order r as the base of a transform of size 2r, one
// random row, on every ISA, against the explicit matrix.
TEST(Hadamard, EveryBuiltInBaseMatchesItsExplicitTransform) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  int orders = 0;
  for (int64_t r = 2; r <= qk::kMaxHadamardBase; ++r) {
    if (!qk::hadamard_built_in(r)) continue;
    ++orders;
    const int64_t n = 2 * r;
    std::vector<float> signs(static_cast<size_t>(n)), base = qk::hadamard_matrix(r), x(static_cast<size_t>(n));
    for (float& v : signs) v = rng() & 1 ? 1.f : -1.f;
    for (float& b : base) b /= std::sqrt(float(r));
    for (float& v : x) v = normal(rng);
    const qk::RandomizedHadamard t(2, r, signs, base);
    // T x from the definition: (H_2 ⊗ B) (signs ⊙ x) / √2.
    std::vector<double> want(static_cast<size_t>(n), 0.0);
    for (int64_t o = 0; o < n; ++o)
      for (int64_t j = 0; j < n; ++j) {
        const double h2 = (o / r == 1 && j / r == 1) ? -1.0 : 1.0;
        want[o] += h2 * base[(o % r) * r + j % r] * signs[j] * x[j] / std::sqrt(2.0);
      }
    for (Isa isa : qk::supported_isas()) {
      std::vector<float> y = x;
      t.apply(y.data(), 1, n, false, isa);
      for (int64_t o = 0; o < n; ++o)
        ASSERT_NEAR(y[o], want[o], 1e-4 * (1 + std::sqrt(double(r)))) << "order " << r << " " << qk::isa_name(isa);
    }
  }
  EXPECT_GT(orders, 70);
}

TEST(Hadamard, RejectsBadTransforms) {
  EXPECT_THROW(qk::RandomizedHadamard(3, 1, std::vector<float>(3, 1.f), {}), std::invalid_argument);
  EXPECT_THROW(qk::RandomizedHadamard(4, 1, std::vector<float>(5, 1.f), {}), std::invalid_argument);
  EXPECT_THROW(qk::RandomizedHadamard(4, 1, std::vector<float>(4, 0.5f), {}), std::invalid_argument);
  EXPECT_THROW(qk::RandomizedHadamard(2, 12, std::vector<float>(24, 1.f), std::vector<float>(143)),
               std::invalid_argument);
}

}  // namespace

namespace {

// random_orthogonal is orthogonal and the same bits on every machine: a
// checksum of its float bits, pinned here (computed once on the machine
// that wrote this test), must not move with the CPU or ISA.
TEST(Hadamard, RandomOrthogonalIsOrthogonalAndPinned) {
  const int64_t r = 43;
  const std::vector<float> q = qk::random_orthogonal(r, 7);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double d = 0;
      for (int64_t k = 0; k < r; ++k) d += double(q[i * r + k]) * q[j * r + k];
      ASSERT_NEAR(d, i == j ? 1.0 : 0.0, 1e-6) << i << " " << j;
    }
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the float bits
  for (float v : q) {
    uint32_t b;
    std::memcpy(&b, &v, sizeof b);
    h = (h ^ b) * 1099511628211ull;
  }
  std::printf("random_orthogonal(43, 7) checksum %016llx\n", static_cast<unsigned long long>(h));
  EXPECT_EQ(h, 0xeaf7c6f9f64420e5ull);
  EXPECT_NE(qk::random_orthogonal(r, 8), q);
}

}  // namespace
