// Tests of the packed matmul kernels (kernels/): every instruction set this
// machine has x bits {2, 3, 4, 8} (and 5..7 on fewer shapes) x group sizes
// {32, 128, per-channel, 100 (not dividing in)} x act-order (shuffled g_idx)
// on and off x odd shapes x row counts, against a plain dequantize + double
// matmul; dequantize must be bit-identical to scale * (q - zero) in float32.
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace qk = qforge::kernels;
using qk::Isa;
using qk::PackedMatrix;

// A random quantized weight in one of the two code orientations.
struct Weight {
  int bits = 4;
  int64_t in = 0, out = 0, groups = 0, group_size = 0;
  bool act_order = false, input_major = true;
  std::vector<uint8_t> q;      // [out][in]
  std::vector<int32_t> g_idx;  // [in]
  std::vector<float> scales;   // [groups][out]
  std::vector<float> zeros;    // [groups][out]
  std::vector<uint32_t> packed;

  float w(int64_t o, int64_t i) const {  // the float32 dequantized weight
    const int64_t g = g_idx[i];
    return scales[g * out + o] * (static_cast<float>(q[o * in + i]) - zeros[g * out + o]);
  }

  qk::QuantizedWeight desc(bool pass_g_idx) const {
    qk::QuantizedWeight d;
    d.bits = bits;
    d.in_features = in;
    d.out_features = out;
    d.codes = packed.data();
    const int64_t words = qk::words_for(in, bits);
    if (input_major) {  // AutoGPTQ qweight [words, out]
      d.code_word_stride = out;
      d.code_out_stride = 1;
    } else {  // [out, words]
      d.code_word_stride = 1;
      d.code_out_stride = words;
    }
    d.groups = groups;
    if (pass_g_idx)
      d.g_idx = g_idx.data();
    else
      d.group_size = group_size;
    d.scales = scales.data();
    d.scale_group_stride = out;
    d.scale_out_stride = 1;
    d.zeros = zeros.data();
    d.zero_group_stride = out;
    d.zero_out_stride = 1;
    return d;
  }
};

// gs = -1: one group per output. Scales are float16 values when f16_scales
// (stored as float16 inside), zero points integers when int_zeros.
Weight make_weight(int bits, int64_t in, int64_t out, int64_t gs, bool act_order,
                   bool input_major, bool f16_scales, bool int_zeros, uint32_t seed) {
  std::mt19937 rng(seed);
  Weight w;
  w.bits = bits;
  w.in = in;
  w.out = out;
  w.group_size = gs < 0 ? in : gs;
  w.groups = (in + w.group_size - 1) / w.group_size;
  w.act_order = act_order;
  w.input_major = input_major;
  const int maxq = (1 << bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  w.q.resize(static_cast<size_t>(out * in));
  for (auto& c : w.q) c = static_cast<uint8_t>(code(rng));
  w.g_idx.resize(static_cast<size_t>(in));
  for (int64_t i = 0; i < in; ++i) w.g_idx[i] = static_cast<int32_t>(i / w.group_size);
  if (act_order) std::shuffle(w.g_idx.begin(), w.g_idx.end(), rng);
  std::uniform_real_distribution<float> scale(0.005f, 0.05f);
  std::uniform_real_distribution<float> frac(0.f, 1.f);
  w.scales.resize(static_cast<size_t>(w.groups * out));
  w.zeros.resize(w.scales.size());
  for (size_t k = 0; k < w.scales.size(); ++k) {
    float s = scale(rng);
    if (f16_scales) s = std::ldexp(std::round(std::ldexp(s, 16)), -16);  // <= 11 bits: a float16
    w.scales[k] = s;
    const float z = static_cast<float>(code(rng));
    w.zeros[k] = int_zeros ? z : z + frac(rng);
  }
  // Pack each output's codes along the input.
  const int64_t words = qk::words_for(in, bits);
  w.packed.assign(static_cast<size_t>(words * out), 0);
  std::vector<uint32_t> row(static_cast<size_t>(words));
  for (int64_t o = 0; o < out; ++o) {
    qk::pack_bits(w.q.data() + o * in, in, bits, row.data());
    for (int64_t k = 0; k < words; ++k) {
      if (input_major)
        w.packed[k * out + o] = row[k];
      else
        w.packed[o * words + k] = row[k];
    }
  }
  return w;
}

std::vector<float> gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// max over (r, o) of |y - ref| / sum_i |x_i| (|w_oi| + s_oi): the error
// relative to sum |x| |w|, plus one quantization step per weight so that a
// row of zero weights (every code equal to its zero point) is measured
// against the size of its grid rather than against 0.
double max_relative_error(const Weight& w, const std::vector<float>& x, int64_t rows,
                          const std::vector<float>& y, const float* bias) {
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < w.out; ++o) {
      double ref = bias ? bias[o] : 0.0, mag = bias ? std::fabs(bias[o]) : 0.0;
      for (int64_t i = 0; i < w.in; ++i) {
        const double p = static_cast<double>(x[r * w.in + i]) * w.w(o, i);
        ref += p;
        mag += std::fabs(x[r * w.in + i]) *
               (std::fabs(w.w(o, i)) + w.scales[w.g_idx[i] * w.out + o]);
      }
      const double err = std::fabs(y[r * w.out + o] - ref) / std::max(mag, 1e-30);
      if (!(err <= worst)) worst = err;  // NaN propagates
    }
  }
  return worst;
}

constexpr double kTolerance = 2e-5;  // one wrong code costs ~1/(4 in) of the measure

std::vector<float> run_gemm(const PackedMatrix& m, const std::vector<float>& x, int64_t rows,
                            const float* bias, Isa isa) {
  PackedMatrix::Input input;
  m.prepare(x.data(), rows, m.in_features(), input);
  std::vector<float> y(static_cast<size_t>(rows * m.out_features()), NAN);
  m.gemm(input, 0, m.tiles(), y.data(), m.out_features(), bias, isa);
  return y;
}

std::string label(Isa isa, const Weight& w, int64_t gs) {
  return std::string(qk::isa_name(isa)) + " bits=" + std::to_string(w.bits) +
         " in=" + std::to_string(w.in) + " out=" + std::to_string(w.out) +
         " group_size=" + std::to_string(gs) + (w.act_order ? " act-order" : "") +
         (w.input_major ? " [words,out]" : " [out,words]");
}

TEST(Kernels, IsaSelection) {
  const auto isas = qk::supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::kPortable);
  EXPECT_TRUE(qk::isa_supported(qk::best_isa()));
  EXPECT_TRUE(qk::isa_supported(qk::active_isa()));
  for (Isa isa : isas) {
    qk::set_isa(isa);
    EXPECT_EQ(qk::active_isa(), isa);
  }
  qk::reset_isa();
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!qk::isa_supported(isa)) {
      EXPECT_THROW(qk::set_isa(isa), std::invalid_argument);
    }
  }
#if defined(__x86_64__)
  // CI and the development machines have AVX-512; say so when a machine
  // doesn't, rather than silently testing less.
  if (!qk::isa_supported(Isa::kAvx512))
    std::printf("note: AVX-512 kernels not tested (not supported here)\n");
#endif
  std::printf("supported:");
  for (Isa isa : isas) std::printf(" %s", qk::isa_name(isa));
  std::printf("; active: %s\n", qk::isa_name(qk::active_isa()));
}

// The main sweep: every ISA x bits x group size x act-order x shapes x rows.
TEST(Kernels, GemmMatchesDequantizedMatmul) {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {172, 1}, {172, 15}, {33, 172}, {172, 257}, {33, 1}, {4100, 15}};
  const std::vector<int64_t> row_counts = {1, 2, 3, 5, 8, 9};
  uint32_t seed = 1;
  double worst = 0;
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t gs : {32, 128, -1, 100}) {
      for (bool act_order : {false, true}) {
        for (const auto& [in, out] : shapes) {
          ++seed;
          const Weight w = make_weight(bits, in, out, gs, act_order, seed % 2 == 0,
                                       seed % 3 != 0, seed % 5 != 0, seed);
          const PackedMatrix m(w.desc(act_order || seed % 2 == 0));
          ASSERT_EQ(m.tiles(), (out + 15) / 16);
          const std::vector<float> bias = gaussian(static_cast<size_t>(out), seed + 7);
          const std::vector<float> x = gaussian(static_cast<size_t>(9 * in), seed + 3);
          for (Isa isa : qk::supported_isas()) {
            for (int64_t rows : row_counts) {
              const bool with_bias = rows % 2 == 1;
              const float* b = with_bias ? bias.data() : nullptr;
              const auto y = run_gemm(m, x, rows, b, isa);
              const double err = max_relative_error(w, x, rows, y, b);
              worst = std::max(worst, err);
              ++cases;
              ASSERT_LE(err, kTolerance) << label(isa, w, gs) << " rows=" << rows;
            }
          }
        }
      }
    }
  }
  std::printf("%d cases, worst error %.3g of sum |x|(|w| + s)\n", cases, worst);
}

TEST(Kernels, OtherWidthsMatch) {
  uint32_t seed = 500;
  for (int bits : {5, 6, 7}) {
    for (bool act_order : {false, true}) {
      ++seed;
      const Weight w = make_weight(bits, 300, 40, 64, act_order, act_order, true, true, seed);
      const PackedMatrix m(w.desc(true));
      const std::vector<float> x = gaussian(3 * 300, seed);
      for (Isa isa : qk::supported_isas())
        for (int64_t rows : {1, 3}) {
          const auto y = run_gemm(m, x, rows, nullptr, isa);
          ASSERT_LE(max_relative_error(w, x, rows, y, nullptr), kTolerance)
              << label(isa, w, 64) << " rows=" << rows;
        }
    }
  }
}

// Groups that are neither contiguous nor aligned to a chunk, unused groups,
// groups of one column, long per-channel runs (several segments).
TEST(Kernels, ArbitraryGroupIndex) {
  std::mt19937 rng(77);
  for (int64_t in : {1, 31, 65, 1500}) {
    Weight w = make_weight(4, in, 20, 7, false, true, false, false, 900 + in);
    // Groups drawn at random (some never used), 7 groups of which ...
    w.groups = 9;
    std::uniform_int_distribution<int> g(0, 8);
    for (auto& v : w.g_idx) v = g(rng) == 4 ? 5 : g(rng);  // group 4 unused
    w.scales.resize(static_cast<size_t>(w.groups * w.out));
    w.zeros.resize(w.scales.size());
    for (size_t k = 0; k < w.scales.size(); ++k) {
      w.scales[k] = 0.01f + 0.001f * static_cast<float>(k % 13);
      w.zeros[k] = static_cast<float>(k % 16);
    }
    const PackedMatrix m(w.desc(true));
    EXPECT_EQ(m.permuted(), in > 1);
    const std::vector<float> x = gaussian(static_cast<size_t>(9 * in), 5);
    for (Isa isa : qk::supported_isas())
      for (int64_t rows : {1, 2, 9}) {
        const auto y = run_gemm(m, x, rows, nullptr, isa);
        ASSERT_LE(max_relative_error(w, x, rows, y, nullptr), kTolerance)
            << qk::isa_name(isa) << " in=" << in << " rows=" << rows;
      }
  }
  // A per-channel layer of 5000 inputs (several segments of 1024).
  const Weight w = make_weight(3, 5000, 17, -1, false, false, true, true, 31);
  const PackedMatrix m(w.desc(false));
  const std::vector<float> x = gaussian(2 * 5000, 6);
  for (Isa isa : qk::supported_isas()) {
    const auto y = run_gemm(m, x, 2, nullptr, isa);
    ASSERT_LE(max_relative_error(w, x, 2, y, nullptr), kTolerance) << qk::isa_name(isa);
  }
}

// Tiles can be computed separately (the plugins split them between threads).
TEST(Kernels, TileRangesCompose) {
  const Weight w = make_weight(4, 200, 70, 32, true, true, true, true, 41);
  const PackedMatrix m(w.desc(true));
  const std::vector<float> x = gaussian(3 * 200, 42);
  PackedMatrix::Input input;
  m.prepare(x.data(), 3, 200, input);
  for (Isa isa : qk::supported_isas()) {
    std::vector<float> whole(3 * 70), parts(3 * 70);
    m.gemm(input, 0, m.tiles(), whole.data(), 70, nullptr, isa);
    for (int64_t t = 0; t < m.tiles(); ++t)
      m.gemm(input, t, t + 1, parts.data(), 70, nullptr, isa);
    EXPECT_EQ(whole, parts) << qk::isa_name(isa);
  }
  std::vector<float> y(3 * 70);
  EXPECT_THROW(m.gemm(input, 0, m.tiles() + 1, y.data(), 70, nullptr), std::invalid_argument);
}

// dequantize_rows / dequantize_transposed give scale * (q - zero) in float32,
// bit for bit, on every ISA.
TEST(Kernels, DequantizeIsBitIdentical) {
  uint32_t seed = 300;
  for (int bits : {2, 3, 4, 5, 8}) {
    for (int64_t gs : {32, -1, 100}) {
      for (bool act_order : {false, true}) {
        ++seed;
        const int64_t in = 130 + seed % 7, out = 33;
        const Weight w =
            make_weight(bits, in, out, gs, act_order, seed % 2 == 0, seed % 3 != 0, seed % 2 == 1,
                        seed);
        const PackedMatrix m(w.desc(true));
        std::vector<float> ref(static_cast<size_t>(out * in));
        for (int64_t o = 0; o < out; ++o)
          for (int64_t i = 0; i < in; ++i) ref[o * in + i] = w.w(o, i);
        std::vector<float> rows(ref.size(), NAN);
        m.dequantize_rows(0, m.tiles(), rows.data(), in);
        EXPECT_EQ(0, std::memcmp(rows.data(), ref.data(), ref.size() * 4))
            << label(qk::active_isa(), w, gs);
        for (Isa isa : qk::supported_isas()) {
          const int64_t ld = 16 * m.tiles() + 3;
          std::vector<float> t(static_cast<size_t>(in * ld), NAN);
          m.dequantize_transposed(0, m.tiles(), t.data(), ld, isa);
          bool same = true;
          for (int64_t o = 0; o < 16 * m.tiles(); ++o)
            for (int64_t i = 0; i < in; ++i) {
              const float want = o < out ? ref[o * in + i] : 0.f;
              same = same && std::memcmp(&t[i * ld + o], &want, 4) == 0;
            }
          EXPECT_TRUE(same) << label(isa, w, gs);
        }
      }
    }
  }
}

// The tolerance is tight enough to catch a wrong code order: swapping the
// two nibbles of every byte (or the first two codes of a word) in the
// reference breaks the comparison.
TEST(Kernels, TestsCanFail) {
  const Weight w = make_weight(4, 256, 48, 128, false, true, true, true, 61);
  const PackedMatrix m(w.desc(false));
  const std::vector<float> x = gaussian(256, 62);
  Weight swapped = w;
  for (int64_t o = 0; o < w.out; ++o)
    for (int64_t i = 0; i + 1 < w.in; i += 2)
      std::swap(swapped.q[o * w.in + i], swapped.q[o * w.in + i + 1]);
  Weight one_code = w;
  one_code.q[5 * w.in + 77] ^= 1;  // a single code off by one
  for (Isa isa : qk::supported_isas()) {
    const auto y = run_gemm(m, x, 1, nullptr, isa);
    EXPECT_LE(max_relative_error(w, x, 1, y, nullptr), kTolerance);
    EXPECT_GT(max_relative_error(swapped, x, 1, y, nullptr), 10 * kTolerance);
    EXPECT_GT(max_relative_error(one_code, x, 1, y, nullptr), kTolerance);
  }
}

TEST(Kernels, NonFiniteActivationsPropagate) {
  const Weight w = make_weight(4, 64, 16, 32, false, true, true, true, 71);
  const PackedMatrix m(w.desc(false));
  std::vector<float> x = gaussian(64, 72);
  x[10] = NAN;
  for (Isa isa : qk::supported_isas()) {
    const auto y = run_gemm(m, x, 1, nullptr, isa);
    for (float v : y) EXPECT_TRUE(std::isnan(v)) << qk::isa_name(isa);
  }
}

TEST(Kernels, RejectsBadDescriptions) {
  const Weight w = make_weight(3, 70, 16, 32, true, true, true, true, 81);
  EXPECT_NO_THROW(PackedMatrix(w.desc(true)));
  auto refused = [&](auto mutate, const char* what) {
    qk::QuantizedWeight d = w.desc(true);
    mutate(d);
    EXPECT_THROW(PackedMatrix{d}, std::invalid_argument) << what;
  };
  refused([](qk::QuantizedWeight& d) { d.bits = 1; }, "bits 1");
  refused([](qk::QuantizedWeight& d) { d.bits = 9; }, "bits 9");
  refused([](qk::QuantizedWeight& d) { d.in_features = 0; }, "no inputs");
  refused([](qk::QuantizedWeight& d) { d.out_features = -1; }, "negative outputs");
  refused([](qk::QuantizedWeight& d) { d.groups = 0; }, "no groups");
  refused([](qk::QuantizedWeight& d) { d.codes = nullptr; }, "no codes");
  refused([](qk::QuantizedWeight& d) { d.scales = nullptr; }, "no scales");
  refused([](qk::QuantizedWeight& d) { d.zeros = nullptr; }, "no zeros");
  refused([](qk::QuantizedWeight& d) { d.groups = 2; }, "g_idx past the groups");
  refused(
      [](qk::QuantizedWeight& d) {
        d.g_idx = nullptr;
        d.group_size = 0;
      },
      "group_size 0");
  refused(
      [](qk::QuantizedWeight& d) {
        d.g_idx = nullptr;
        d.group_size = 16;
      },
      "group_size needs more groups");
  std::vector<int32_t> negative(70, 0);
  negative[69] = -1;
  refused([&](qk::QuantizedWeight& d) { d.g_idx = negative.data(); }, "negative g_idx");
}

}  // namespace
