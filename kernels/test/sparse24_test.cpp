// Tests of the 2:4-sparse kernels (sparse24.hpp): detection, pack / unpack
// bit for bit (and the refusal of weights that are not 2:4), the matmul on
// every ISA this machine has against a double-precision reference within a
// float32 summation bound over odd shapes (out not a multiple of the register
// blocks, in = 4, 8, not a multiple of 32), 1..17 rows, with and without bias;
// the ISAs against each other; splitting the outputs between calls changes no
// bit. The project also runs this binary with QFORGE_KERNEL=avx2 and
// =portable (matmul() without an ISA then takes that one).
#include <qforge_kernels/sparse24.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace qk = qforge::kernels;
namespace s24 = qforge::kernels::sparse24;
using qk::Isa;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// A random 2:4 matrix [out][in]: per group 2 random positions hold gaussian
// values; 1 group in 8 has one kept zero, 1 in 16 is all zeros, and when
// `negative_zeros` some dropped or kept weights are -0.0 (at most 2 per group,
// so that they all survive).
std::vector<float> sparse_weights(int64_t out, int64_t in, uint32_t seed,
                                  bool negative_zeros = false) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::uniform_int_distribution<int> u(0, 127);
  std::vector<float> w(static_cast<size_t>(out * in), 0.f);
  for (int64_t g = 0; g < out * in / 4; ++g) {
    float* wg = w.data() + 4 * g;
    const int a = u(rng) % 4;
    int b = u(rng) % 3;
    b += b >= a;
    const int kind = u(rng);
    if (kind % 16 == 0) continue;  // all zeros
    wg[a] = d(rng);
    if (kind % 8 != 1) wg[b] = d(rng);
    if (negative_zeros && kind % 4 == 2) {
      int n = (wg[a] != 0.f) + (wg[b] != 0.f);
      for (int j = 0; j < 4 && n < 2; ++j)
        if (wg[j] == 0.f) {
          wg[j] = -0.f;
          ++n;
        }
    }
  }
  return w;
}

std::vector<float> gaussian(int64_t n, uint32_t seed, float sigma = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, sigma);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = d(rng);
  return v;
}

// |y - ref| within (n + 4) 2^-24 sum |w x| (a float32 sum of n products with
// fused multiply-adds in any order) + the bias's rounding.
void expect_close(const std::vector<float>& w, int64_t out, int64_t in, const std::vector<float>& x,
                  int64_t rows, const float* bias, const std::vector<float>& y,
                  const std::string& what) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0, mag = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double p = static_cast<double>(w[o * in + i]) * x[r * in + i];
        sum += p;
        mag += std::fabs(p);
      }
      const double b = bias ? bias[o] : 0.0;
      const double ref = sum + b;
      const double tol = (static_cast<double>(in / 2) + 4) * std::ldexp(1.0, -24) * mag +
                         std::ldexp(std::fabs(ref) + std::fabs(b), -23) + 1e-30;
      ASSERT_NEAR(y[r * out + o], ref, tol) << what << " r=" << r << " o=" << o;
    }
}

TEST(Sparse24, DetectsTwoFour) {
  std::vector<float> w = {1, 0, 0, 2, 0, 0, 0, 0, -0.f, 3, 4, 0.f};
  EXPECT_TRUE(s24::is_24(w.data(), 1, 12));
  EXPECT_TRUE(s24::is_24(w.data(), 3, 4));
  EXPECT_FALSE(s24::is_24(w.data(), 1, 6));  // in % 4 != 0
  EXPECT_FALSE(s24::is_24(w.data(), 1, 0));
  EXPECT_TRUE(s24::is_24(nullptr, 0, 8));
  w[1] = 5;  // 3 nonzero in the first group
  EXPECT_FALSE(s24::is_24(w.data(), 1, 12));
  EXPECT_TRUE(s24::is_24(w.data() + 4, 2, 4));
  w[1] = std::numeric_limits<float>::quiet_NaN();  // NaN is not a zero
  EXPECT_FALSE(s24::is_24(w.data(), 1, 12));
}

TEST(Sparse24, RefusesWeightsThatAreNotTwoFour) {
  std::vector<float> w = sparse_weights(5, 36, 1);
  EXPECT_NO_THROW(s24::pack(w.data(), 5, 36));
  w[4 * 17 + 0] = 1.f;
  w[4 * 17 + 1] = 2.f;
  w[4 * 17 + 2] = 3.f;
  EXPECT_FALSE(s24::is_24(w.data(), 5, 36));
  EXPECT_THROW(s24::pack(w.data(), 5, 36), std::invalid_argument);
  EXPECT_THROW(s24::pack(w.data(), 1, 6), std::invalid_argument);
  EXPECT_THROW(s24::pack(w.data(), 1, 0), std::invalid_argument);
  EXPECT_THROW(s24::pack(w.data(), -1, 4), std::invalid_argument);
  EXPECT_THROW(s24::pack(nullptr, 1, 4), std::invalid_argument);
  const std::vector<float> dense(8, 1.f);
  EXPECT_THROW(s24::pack(dense.data(), 2, 4), std::invalid_argument);
}

TEST(Sparse24, PackUnpackRoundTripsBitForBit) {
  uint32_t seed = 10;
  for (int64_t out : {1, 3, 16, 17}) {
    for (int64_t in : {4, 8, 12, 32, 36, 64, 100, 260}) {
      for (bool nz : {false, true}) {
        const auto w = sparse_weights(out, in, ++seed, nz);
        ASSERT_TRUE(s24::is_24(w.data(), out, in));
        const s24::Packed p = s24::pack(w.data(), out, in);
        ASSERT_EQ(p.values.size(), static_cast<size_t>(out * in / 2));
        ASSERT_EQ(p.indices.size(), static_cast<size_t>(out * ((in + 31) / 32)));
        EXPECT_EQ(p.bytes(), p.values.size() * 4 + p.indices.size() * 4);
        std::vector<float> back(w.size(), 7.f);
        s24::unpack(p, back.data());
        for (size_t k = 0; k < w.size(); ++k)
          ASSERT_EQ(bits_of(back[k]), bits_of(w[k])) << "out=" << out << " in=" << in << " k=" << k;
        // Kept values in increasing input order, codes 0 past the last value.
        for (int64_t o = 0; o < out; ++o) {
          for (int64_t g = 0; g < in / 4; ++g) ASSERT_LT(p.code(o, 2 * g), p.code(o, 2 * g + 1));
          if (in % 32 != 0) {
            EXPECT_EQ(p.indices[o * p.words() + p.words() - 1] >> (in % 32), 0u);
          }
        }
      }
    }
  }
}

TEST(Sparse24, UnpackTurnsDroppedNegativeZerosPositive) {
  const std::vector<float> w = {-0.f, 2.f, -0.f, 3.f, -0.f, -0.f, -0.f, 0.f};
  const s24::Packed p = s24::pack(w.data(), 1, 8);
  std::vector<float> back(8, 7.f);
  s24::unpack(p, back.data());
  for (int k = 0; k < 8; ++k) EXPECT_EQ(back[k], w[k]);
  EXPECT_EQ(bits_of(back[0]), 0u);                  // dropped
  EXPECT_EQ(bits_of(back[4]), bits_of(-0.f));       // kept: the first two -0.0
  EXPECT_EQ(bits_of(back[5]), bits_of(-0.f));
  EXPECT_EQ(bits_of(back[6]), 0u);
  EXPECT_EQ(bits_of(back[7]), 0u);
}

TEST(Sparse24, MatmulMatchesDoubleReferenceOnEveryIsa) {
  uint32_t seed = 100;
  for (int64_t out : {1, 5, 8, 15, 17, 33}) {
    for (int64_t in : {4, 8, 12, 28, 32, 36, 60, 64, 100, 132}) {
      const auto w = sparse_weights(out, in, ++seed);
      const s24::Packed p = s24::pack(w.data(), out, in);
      const auto bias = gaussian(out, ++seed);
      for (int64_t rows = 1; rows <= 17; ++rows) {
        const auto x = gaussian(rows * in, ++seed);
        const float* b = rows % 2 ? bias.data() : nullptr;
        std::vector<std::vector<float>> ys;
        for (Isa isa : qk::supported_isas()) {
          std::vector<float> y(static_cast<size_t>(rows * out), -1.f);
          s24::matmul_outputs(p, x.data(), rows, y.data(), b, 0, out, isa);
          const std::string what = std::string(qk::isa_name(isa)) + " out=" + std::to_string(out) +
                                   " in=" + std::to_string(in) + " rows=" + std::to_string(rows);
          expect_close(w, out, in, x, rows, b, y, what);
          ys.push_back(std::move(y));
        }
        // The ISAs agree with each other within twice the bound (implied);
        // check directly against the first with the same bound on |w x|.
        for (size_t k = 1; k < ys.size(); ++k)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < out; ++o) {
              double mag = 0;
              for (int64_t i = 0; i < in; ++i)
                mag += std::fabs(static_cast<double>(w[o * in + i]) * x[r * in + i]);
              const double tol = (static_cast<double>(in) + 8) * std::ldexp(1.0, -24) * mag +
                                 std::ldexp(std::fabs(ys[0][r * out + o]) + 4.0, -22);
              ASSERT_NEAR(ys[k][r * out + o], ys[0][r * out + o], tol)
                  << "isa #" << k << " out=" << out << " in=" << in << " rows=" << rows;
            }
      }
    }
  }
}

TEST(Sparse24, LargeMatrixOnEveryIsa) {
  const int64_t out = 70, in = 4100;
  const auto w = sparse_weights(out, in, 7);
  const s24::Packed p = s24::pack(w.data(), out, in);
  const auto bias = gaussian(out, 8);
  for (int64_t rows : {1, 4, 9}) {
    const auto x = gaussian(rows * in, 9 + static_cast<uint32_t>(rows), 3.f);
    for (Isa isa : qk::supported_isas()) {
      std::vector<float> y(static_cast<size_t>(rows * out));
      s24::matmul_outputs(p, x.data(), rows, y.data(), bias.data(), 0, out, isa);
      expect_close(w, out, in, x, rows, bias.data(), y,
                   std::string(qk::isa_name(isa)) + " rows=" + std::to_string(rows));
    }
  }
}

// Each output's sum has one order per ISA whatever the register block it
// falls in: output ranges (as threads take them) give the same bits.
TEST(Sparse24, OutputRangesGiveTheSameBits) {
  const int64_t out = 45, in = 168;
  const auto w = sparse_weights(out, in, 21);
  const s24::Packed p = s24::pack(w.data(), out, in);
  const auto bias = gaussian(out, 22);
  for (int64_t rows : {1, 2, 3, 6}) {
    const auto x = gaussian(rows * in, 23);
    for (Isa isa : qk::supported_isas()) {
      std::vector<float> all(static_cast<size_t>(rows * out)), split(all.size(), -1.f);
      s24::matmul_outputs(p, x.data(), rows, all.data(), bias.data(), 0, out, isa);
      for (int64_t o0 : {0, 1, 4, 7, 8, 9, 17, 26, 33, 41}) {
        const int64_t o1 = std::min(out, o0 + 1 + o0 % 5);
        s24::matmul_outputs(p, x.data(), rows, split.data(), bias.data(), o0, o1, isa);
      }
      int64_t next = 0;
      for (int64_t o0 = 0; o0 < out; o0 = next) {  // the rest
        next = std::min(out, o0 + 3);
        s24::matmul_outputs(p, x.data(), rows, split.data(), bias.data(), o0, next, isa);
      }
      for (size_t k = 0; k < all.size(); ++k)
        ASSERT_EQ(bits_of(split[k]), bits_of(all[k])) << qk::isa_name(isa) << " k=" << k;
      // The same through a parallel_for-shaped callable cutting by its grain.
      std::vector<float> par(all.size(), -1.f);
      qk::set_isa(isa);
      s24::matmul(p, x.data(), rows, par.data(), bias.data(),
                  [](int64_t b, int64_t e, int64_t, const auto& f) {
                    for (int64_t s = b; s < e; s += 7) f(s, std::min(e, s + 7));
                  });
      qk::reset_isa();
      for (size_t k = 0; k < all.size(); ++k)
        ASSERT_EQ(bits_of(par[k]), bits_of(all[k])) << qk::isa_name(isa) << " k=" << k;
    }
  }
}

// matmul() without an ISA runs active_isa() (QFORGE_KERNEL when set).
TEST(Sparse24, MatmulUsesTheActiveIsa) {
  const int64_t out = 19, in = 72, rows = 3;
  const auto w = sparse_weights(out, in, 31);
  const s24::Packed p = s24::pack(w.data(), out, in);
  const auto x = gaussian(rows * in, 32);
  std::vector<float> y(static_cast<size_t>(rows * out)), ref(y.size());
  s24::matmul(p, x.data(), rows, y.data(), nullptr);
  s24::matmul_outputs(p, x.data(), rows, ref.data(), nullptr, 0, out, qk::active_isa());
  for (size_t k = 0; k < y.size(); ++k) ASSERT_EQ(bits_of(y[k]), bits_of(ref[k]));
  expect_close(w, out, in, x, rows, nullptr, y, "active");
}

// Only the kept weights are multiplied: an infinite input where every row has
// dropped its weight (its group holds 2 nonzero ones) leaves y finite.
TEST(Sparse24, DroppedWeightsIgnoreTheirInputs) {
  const int64_t out = 9, in = 44, rows = 2;
  auto w = sparse_weights(out, in, 41);
  for (int64_t o = 0; o < out; ++o) {  // inputs 40..43: 2 nonzero, input 41 dropped
    w[o * in + 40] = 1.5f + static_cast<float>(o);
    w[o * in + 41] = 0.f;
    w[o * in + 42] = o % 2 ? 0.f : -0.25f;
    w[o * in + 43] = o % 2 ? 0.75f : 0.f;
  }
  const s24::Packed p = s24::pack(w.data(), out, in);
  auto x = gaussian(rows * in, 42);
  for (int64_t r = 0; r < rows; ++r) x[r * in + 41] = std::numeric_limits<float>::infinity();
  for (Isa isa : qk::supported_isas()) {
    std::vector<float> y(static_cast<size_t>(rows * out));
    s24::matmul_outputs(p, x.data(), rows, y.data(), nullptr, 0, out, isa);
    for (float v : y) ASSERT_TRUE(std::isfinite(v)) << qk::isa_name(isa);
    auto x0 = x;
    for (int64_t r = 0; r < rows; ++r) x0[r * in + 41] = 0.f;
    expect_close(w, out, in, x0, rows, nullptr, y, qk::isa_name(isa));
  }
}

TEST(Sparse24, RejectsBadCalls) {
  const auto w = sparse_weights(4, 8, 51);
  const s24::Packed p = s24::pack(w.data(), 4, 8);
  std::vector<float> x(8), y(4);
  EXPECT_THROW(s24::matmul_outputs(p, x.data(), 1, y.data(), nullptr, 0, 5, Isa::kPortable),
               std::invalid_argument);
  EXPECT_THROW(s24::matmul_outputs(p, x.data(), 1, y.data(), nullptr, 3, 2, Isa::kPortable),
               std::invalid_argument);
  EXPECT_NO_THROW(s24::matmul_outputs(p, x.data(), 0, y.data(), nullptr, 0, 4, Isa::kPortable));
}

}  // namespace
