// Tests of the sign-plane kernels (sign_chain.hpp) on every instruction set
// this machine has: odd shapes (partial bytes and words) and row counts
// against a double-precision product of the unpacked signs; the same bits on
// every ISA and for any split of the outputs between threads (sign_body.inc
// fixes every reduction's order); the layout round trip; backward_input and
// the scale gradients against the same references; bad chains refused.
#include <qforge_kernels/sign_chain.hpp>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

namespace qk = qforge::kernels;
using qk::Isa;
using qk::SignChain;
using qk::SignPlane;

struct Plane {
  int64_t rows, cols;
  std::vector<uint8_t> msb;  // the formats' layout
  std::vector<int> s;        // ±1, [rows][cols]
};

Plane random_plane(int64_t rows, int64_t cols, std::mt19937& rng) {
  Plane p{rows, cols, {}, {}};
  const int64_t row_bytes = (cols + 7) / 8;
  p.msb.assign(static_cast<size_t>(rows * row_bytes), 0xFF);
  p.s.resize(static_cast<size_t>(rows * cols));
  for (int64_t o = 0; o < rows; ++o)
    for (int64_t j = 0; j < cols; ++j) {
      const bool plus = rng() & 1;
      p.s[o * cols + j] = plus ? 1 : -1;
      if (!plus) p.msb[o * row_bytes + j / 8] &= static_cast<uint8_t>(~(0x80u >> (j % 8)));
    }
  return p;
}

std::vector<float> randoms(size_t n, std::mt19937& rng, float lo = -1, float hi = 1) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = d(rng);
  return v;
}

// A two-plane chain (DBF's shape): in → k → out, with its reference weight.
struct Dbf {
  int64_t in, k, out;
  Plane b, a;  // b: [k, in] acts first, a: [out, k]
  std::vector<float> s0, s2, s4, bias;
  std::vector<double> w;  // [out][in], double

  SignChain chain() const {
    std::vector<SignPlane> planes;
    planes.emplace_back(b.msb.data(), k, in);
    planes.emplace_back(a.msb.data(), out, k);
    return SignChain(std::move(planes), {s0, s2, s4}, bias);
  }
};

Dbf random_dbf(int64_t in, int64_t k, int64_t out, bool with_bias, std::mt19937& rng) {
  Dbf d{in, k, out, random_plane(k, in, rng), random_plane(out, k, rng),
        randoms(in, rng, 0.5, 1.5), randoms(k, rng, 0.5, 1.5), randoms(out, rng, 0.01, 0.1),
        with_bias ? randoms(out, rng) : std::vector<float>{}, {}};
  d.w.assign(static_cast<size_t>(out * in), 0.0);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < k; ++j)
      for (int64_t i = 0; i < in; ++i)
        d.w[o * in + i] += double(d.s4[o]) * d.a.s[o * k + j] * d.s2[j] * d.b.s[j * in + i] * d.s0[i];
  return d;
}

// Splits [0, n) into pieces of 1 and runs them last first: any order must do.
const qk::ParallelFor kBackwards = [](int64_t b, int64_t e,
                                      const std::function<void(int64_t, int64_t)>& f) {
  for (int64_t i = e; i-- > b;) f(i, i + 1);
};

TEST(SignChain, ForwardMatchesTheUnpackedProductOnEveryIsa) {
  std::mt19937 rng(5);
  const int64_t shapes[][3] = {{53, 37, 29}, {1, 1, 1}, {64, 64, 64}, {65, 130, 7},
                               {200, 96, 131}, {17, 300, 64}};
  for (const auto& sh : shapes) {
    const Dbf d = random_dbf(sh[0], sh[1], sh[2], sh[0] % 2 == 1, rng);
    const SignChain c = d.chain();
    for (int64_t rows : {1, 2, 3, 4, 5, 9}) {
      const std::vector<float> x = randoms(static_cast<size_t>(rows * d.in), rng);
      std::vector<float> first;
      for (Isa isa : qk::supported_isas())
        for (bool threads : {false, true}) {
          std::vector<float> y(static_cast<size_t>(rows * (d.out + 3)), NAN);
          c.forward(x.data(), rows, d.in, y.data(), d.out + 3, threads ? kBackwards : qk::ParallelFor{},
                    isa);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = 0; o < d.out; ++o) {
              double want = d.bias.empty() ? 0 : d.bias[o], mag = 0;
              for (int64_t i = 0; i < d.in; ++i) {
                want += d.w[o * d.in + i] * x[r * d.in + i];
                mag += std::abs(d.s4[o]) * d.k * 1.5 * 1.5 * std::abs(x[r * d.in + i]);
              }
              ASSERT_NEAR(y[r * (d.out + 3) + o], want, 1e-6 * mag + 1e-6)
                  << qk::isa_name(isa) << " " << d.in << "x" << d.k << "x" << d.out << " row " << r;
            }
          std::vector<float> got;
          for (int64_t r = 0; r < rows; ++r)
            got.insert(got.end(), y.begin() + r * (d.out + 3), y.begin() + r * (d.out + 3) + d.out);
          if (first.empty())
            first = got;
          else  // the same bits on every ISA and split
            EXPECT_EQ(std::memcmp(first.data(), got.data(), got.size() * sizeof(float)), 0)
                << qk::isa_name(isa) << (threads ? " threads" : "") << " rows " << rows;
        }
    }
  }
}

TEST(SignChain, PlaneLayoutRoundTrips) {
  std::mt19937 rng(7);
  const Plane p = random_plane(13, 77, rng);
  const SignPlane s(p.msb.data(), p.rows, p.cols);
  EXPECT_EQ(s.words(), 2);
  EXPECT_EQ(s.msb_rows(), p.msb);
  std::vector<float> u(static_cast<size_t>(13 * 77));
  s.unpack(0, 13, u.data(), 77);
  const SignPlane t = s.transposed();
  std::vector<float> ut(static_cast<size_t>(77 * 13));
  t.unpack(0, 77, ut.data(), 13);
  for (int64_t o = 0; o < 13; ++o)
    for (int64_t j = 0; j < 77; ++j) {
      ASSERT_EQ(u[o * 77 + j], p.s[o * 77 + j]);
      ASSERT_EQ(ut[j * 13 + o], p.s[o * 77 + j]);
    }
}

TEST(SignChain, GradientsMatchTheReference) {
  std::mt19937 rng(9);
  const Dbf d = random_dbf(45, 70, 33, true, rng);
  const SignChain c = d.chain();
  const int64_t rows = 6;
  const std::vector<float> x = randoms(static_cast<size_t>(rows * d.in), rng);
  const std::vector<float> gy = randoms(static_cast<size_t>(rows * d.out), rng);
  // grad_x = grad_y W
  std::vector<float> gx(static_cast<size_t>(rows * d.in));
  c.backward_input(gy.data(), rows, d.out, gx.data(), d.in, kBackwards);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < d.in; ++i) {
      double want = 0;
      for (int64_t o = 0; o < d.out; ++o) want += gy[r * d.out + o] * d.w[o * d.in + i];
      ASSERT_NEAR(gx[r * d.in + i], want, 1e-4) << r << " " << i;
    }
  // ∂L/∂s for L = Σ gy ⊙ y, in double from the signs.
  std::vector<double> u(static_cast<size_t>(rows * d.k)), z(static_cast<size_t>(rows * d.out));
  std::vector<double> g4(d.out, 0), g2(d.k, 0), g0(d.in, 0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < d.k; ++j)
      for (int64_t i = 0; i < d.in; ++i) u[r * d.k + j] += d.b.s[j * d.in + i] * double(d.s0[i]) * x[r * d.in + i];
    for (int64_t o = 0; o < d.out; ++o)
      for (int64_t j = 0; j < d.k; ++j) z[r * d.out + o] += d.a.s[o * d.k + j] * double(d.s2[j]) * u[r * d.k + j];
    for (int64_t o = 0; o < d.out; ++o) g4[o] += gy[r * d.out + o] * z[r * d.out + o];
    for (int64_t j = 0; j < d.k; ++j) {
      double gh = 0;  // ∂L/∂(s2 ⊙ u)_j
      for (int64_t o = 0; o < d.out; ++o) gh += gy[r * d.out + o] * double(d.s4[o]) * d.a.s[o * d.k + j];
      g2[j] += gh * u[r * d.k + j];
      for (int64_t i = 0; i < d.in; ++i) g0[i] += gh * double(d.s2[j]) * d.b.s[j * d.in + i] * x[r * d.in + i];
    }
  }
  std::vector<float> a0(d.in, 1.0f), a2(d.k, 1.0f), a4(d.out, 1.0f);  // += on top of 1
  float* grads[] = {a0.data(), a2.data(), a4.data()};
  c.backward_scales(x.data(), d.in, gy.data(), d.out, rows, grads, kBackwards);
  for (int64_t o = 0; o < d.out; ++o) ASSERT_NEAR(a4[o] - 1.0, g4[o], 1e-3 * (1 + std::abs(g4[o])));
  for (int64_t j = 0; j < d.k; ++j) ASSERT_NEAR(a2[j] - 1.0, g2[j], 1e-3 * (1 + std::abs(g2[j])));
  for (int64_t i = 0; i < d.in; ++i) ASSERT_NEAR(a0[i] - 1.0, g0[i], 1e-3 * (1 + std::abs(g0[i])));
}

TEST(SignChain, SetScaleChangesTheProduct) {
  std::mt19937 rng(3);
  const Dbf d = random_dbf(20, 10, 12, false, rng);
  SignChain c = d.chain();
  const std::vector<float> x = randoms(20, rng);
  std::vector<float> y1(12), y2(12);
  c.forward(x.data(), 1, 20, y1.data(), 12);
  std::vector<float> doubled = d.s4;
  for (float& v : doubled) v *= 2;
  c.set_scale(2, doubled.data());
  c.forward(x.data(), 1, 20, y2.data(), 12);
  for (int o = 0; o < 12; ++o) EXPECT_FLOAT_EQ(y2[o], 2 * y1[o]);
}

TEST(SignChain, RejectsChainsThatDoNotFit) {
  std::mt19937 rng(1);
  const Plane a = random_plane(4, 6, rng), b = random_plane(5, 4, rng);
  auto planes = [&](const Plane& p, const Plane& q) {
    std::vector<SignPlane> v;
    v.emplace_back(p.msb.data(), p.rows, p.cols);
    v.emplace_back(q.msb.data(), q.rows, q.cols);
    return v;
  };
  const std::vector<float> s6(6, 1), s4(4, 1), s5(5, 1);
  EXPECT_NO_THROW(SignChain(planes(a, b), {s6, s4, s5}, {}));
  EXPECT_THROW(SignChain(planes(b, a), {s4, s5, s4}, {}), std::invalid_argument);  // 5 rows → 6 cols
  EXPECT_THROW(SignChain(planes(a, b), {s6, s5, s5}, {}), std::invalid_argument);   // middle scale
  EXPECT_THROW(SignChain(planes(a, b), {s6, s4}, {}), std::invalid_argument);       // too few scales
  EXPECT_THROW(SignChain(planes(a, b), {s6, s4, s5}, s4), std::invalid_argument);   // bias size
  EXPECT_THROW(SignChain({}, {s6}, {}), std::invalid_argument);
  EXPECT_THROW(SignPlane(a.msb.data(), 0, 6), std::invalid_argument);
}

}  // namespace
