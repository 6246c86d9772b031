// Tests of the W8A8 kernels (int8_matmul.hpp, fp8.hpp) and their ATen glue
// (torch_w8a8.hpp).
//
// INT8, on every path this machine has: activation codes, scales and sums
// equal to the definition computed here (so equal across paths); int32
// accumulators equal to an exact integer reference and float outputs
// bit-identical to that reference + the same epilogue, over odd shapes,
// extreme codes (-128, 127, activations of -127/127 everywhere, the largest
// in_features) and tile ranges.
// FP8: the table against its formula; the encoder against an independent
// nearest-value search over a stride of all float bit patterns and every
// midpoint +- 1 ulp, on every ISA; SIMD decode and dequantize equal to the
// table; the linear layer against a double-precision reference within a
// float32 summation bound (its sums are float and their order is the ISA's).
// The project also runs this binary with QFORGE_KERNEL=avx2 and =portable.
#include <qforge_kernels/fp8.hpp>
#include <qforge_kernels/int8_matmul.hpp>
#include <qforge_kernels/torch_w8a8.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace qk = qforge::kernels;
using qk::Fp8Matrix;
using qk::Int8Matrix;
using qk::Int8Path;
using qk::Isa;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Activations of `rows` rows: gaussian, with rows that stress the quantizer.
// Row 0 (when rows > 2): zeros; row 1: one huge value; row 2: tiny values;
// every 5th row: values k + 0.5 with absmax 127 (ties at scale 1).
std::vector<float> activations(int64_t rows, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(rows * in));
  for (auto& v : x) v = d(rng);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * in;
    if (rows > 2 && r == 0) std::fill(row, row + in, 0.f);
    if (rows > 2 && r == 1) row[in / 2] = 3e30f;
    if (rows > 2 && r == 2)
      for (int64_t i = 0; i < in; ++i) row[i] *= 1e-30f;
    if (r % 5 == 4) {
      for (int64_t i = 0; i < in; ++i)
        row[i] = static_cast<float>(static_cast<int>(rng() % 254) - 127) + 0.5f;
      row[0] = -127.f;
    }
  }
  return x;
}

// ---------------------------------------------------------------------------
// INT8
// ---------------------------------------------------------------------------

// The definition (int8_matmul.hpp) of one row's codes, scale and sum.
void reference_int8_row(const float* x, int64_t in, float static_scale, int8_t* q, float& s,
                        int32_t& sum) {
  float inv = 0.f;
  if (static_scale > 0.f) {
    s = static_scale;
    inv = 1.0f / static_scale;
  } else {
    float m = 0.f;
    for (int64_t i = 0; i < in; ++i) m = std::max(m, std::fabs(x[i]));
    s = m / 127.0f;
    if (m > 0.f) inv = 127.0f / m;
  }
  sum = 0;
  for (int64_t i = 0; i < in; ++i) {
    const float v = std::nearbyint(x[i] * inv);
    q[i] = static_cast<int8_t>(std::isnan(v) ? -127.f : std::min(127.f, std::max(-127.f, v)));
    sum += q[i];
  }
}

// Random codes in [-128, 127]; row 0 all -128 and row 1 all 127 when out > 2.
std::vector<int8_t> int8_weights(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int8_t> w(static_cast<size_t>(out * in));
  for (auto& c : w) c = static_cast<int8_t>(static_cast<int>(rng() % 256) - 128);
  if (out > 2) {
    std::fill(w.begin(), w.begin() + in, int8_t{-128});
    std::fill(w.begin() + in, w.begin() + 2 * in, int8_t{127});
  }
  return w;
}

std::vector<float> channel_scales(int64_t out, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(1e-4f, 2e-2f);
  std::vector<float> s(static_cast<size_t>(out));
  for (auto& v : s) v = d(rng);
  return s;
}

qk::Int8Activations quantized(const std::vector<float>& x, int64_t rows, int64_t in,
                              float static_scale, Int8Path path) {
  qk::Int8Activations a;
  a.resize(rows, in);
  qk::quantize_int8(x.data(), in, 0, rows, static_scale, a, path);
  return a;
}

// Every row's codes, scale and sum equal the definition.
void expect_int8_codes(const qk::Int8Activations& a, const std::vector<float>& x,
                       float static_scale, const std::string& what) {
  std::vector<int8_t> q(static_cast<size_t>(a.in));
  for (int64_t r = 0; r < a.rows; ++r) {
    float s = 0.f;
    int32_t sum = 0;
    reference_int8_row(x.data() + r * a.in, a.in, static_scale, q.data(), s, sum);
    ASSERT_EQ(bits_of(a.scales[r]), bits_of(s)) << what << " row " << r;
    ASSERT_EQ(a.sums[r], sum) << what << " row " << r;
    ASSERT_EQ(0, std::memcmp(q.data(), a.codes.data() + r * a.ld, q.size()))
        << what << " row " << r;
    for (int64_t i = a.in; i < a.ld; ++i) ASSERT_EQ(a.codes[r * a.ld + i], 0) << what;
  }
}

// Checks gemm_int32 and gemm of one path against the exact reference.
void expect_int8_gemm(const Int8Matrix& m, const std::vector<int8_t>& w,
                      const std::vector<float>& sw, const qk::Int8Activations& a, const float* bias,
                      Int8Path path, const std::string& what) {
  const int64_t out = m.out_features(), in = m.in_features(), rows = a.rows;
  const int64_t ldy = out + 3;  // a leading dimension past out
  std::vector<int32_t> acc(static_cast<size_t>(rows * ldy), -1);
  std::vector<float> y(static_cast<size_t>(rows * ldy), -1.f);
  m.gemm_int32(a, 0, m.tiles(), acc.data(), ldy, path);
  m.gemm(a, 0, m.tiles(), y.data(), ldy, bias, path);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      int64_t exact = 0;
      for (int64_t i = 0; i < in; ++i)
        exact += int64_t{a.codes[r * a.ld + i]} * int64_t{w[o * in + i]};
      ASSERT_EQ(acc[r * ldy + o], exact) << what << " r=" << r << " o=" << o;
      float ref = static_cast<float>(static_cast<int32_t>(exact)) * (a.scales[r] * sw[o]);
      if (bias != nullptr) ref = ref + bias[o];
      ASSERT_EQ(bits_of(y[r * ldy + o]), bits_of(ref)) << what << " r=" << r << " o=" << o;
    }
    for (int64_t o = out; o < ldy; ++o) {
      ASSERT_EQ(acc[r * ldy + o], -1) << what << ": wrote past out";
      ASSERT_EQ(y[r * ldy + o], -1.f) << what << ": wrote past out";
    }
  }
}

std::string int8_label(Int8Path path, int64_t rows, int64_t out, int64_t in) {
  return std::string(qk::int8_path_name(path)) + " rows=" + std::to_string(rows) +
         " out=" + std::to_string(out) + " in=" + std::to_string(in);
}

TEST(Int8, PathSelection) {
  const auto paths = qk::int8_paths();
  ASSERT_FALSE(paths.empty());
  EXPECT_EQ(paths.front(), Int8Path::kPortable);
  EXPECT_EQ(qk::int8_path_for(Isa::kPortable), Int8Path::kPortable);
  EXPECT_EQ(qk::int8_path_for(Isa::kAvx512), paths.back());
  if (qk::int8_path_supported(Int8Path::kAvx2)) {
    EXPECT_EQ(qk::int8_path_for(Isa::kAvx2), Int8Path::kAvx2);
  }
  EXPECT_EQ(qk::active_int8_path(), qk::int8_path_for(qk::active_isa()));
  // What the project's forced runs rely on.
  const char* env = std::getenv("QFORGE_KERNEL");
  const std::string forced = env != nullptr ? env : "";
  if (forced == "portable") {
    EXPECT_EQ(qk::active_int8_path(), Int8Path::kPortable);
  }
  if (forced == "avx2" && qk::int8_path_supported(Int8Path::kAvx2)) {
    EXPECT_EQ(qk::active_int8_path(), Int8Path::kAvx2);
  }
  for (Isa isa : qk::supported_isas()) {
    qk::set_isa(isa);
    EXPECT_EQ(qk::active_int8_path(), qk::int8_path_for(isa));
  }
  qk::reset_isa();
#if defined(__x86_64__)
  if (!qk::int8_path_supported(Int8Path::kAvx512Vnni))
    std::printf("note: AVX-512 VNNI kernels not tested (not supported here)\n");
  if (!qk::int8_path_supported(Int8Path::kAmx))
    std::printf("note: AMX kernel not tested (not supported here)\n");
#endif
  std::printf("int8 paths:");
  for (Int8Path p : paths) std::printf(" %s", qk::int8_path_name(p));
  std::printf("; active: %s (QFORGE_KERNEL=%s)\n", qk::int8_path_name(qk::active_int8_path()),
              forced.c_str());
}

TEST(Int8, ActivationCodesMatchTheDefinitionOnEveryPath) {
  for (int64_t in : {1, 3, 15, 16, 17, 37, 64, 130, 4099}) {
    const int64_t rows = 11;
    std::vector<float> x = activations(rows, in, 5 + static_cast<uint32_t>(in));
    x[3 * in] = std::numeric_limits<float>::quiet_NaN();  // deterministic: -127
    for (float static_scale : {0.f, 0.0123f}) {
      for (Int8Path path : qk::int8_paths()) {
        const auto a = quantized(x, rows, in, static_scale, path);
        expect_int8_codes(a, x, static_scale,
                          std::string(qk::int8_path_name(path)) + " in=" + std::to_string(in) +
                              " static=" + std::to_string(static_scale));
      }
    }
  }
}

TEST(Int8, ZeroRowGivesZeroScaleAndCodes) {
  const std::vector<float> x(70, 0.f);
  for (Int8Path path : qk::int8_paths()) {
    const auto a = quantized(x, 1, 70, 0.f, path);
    EXPECT_EQ(a.scales[0], 0.f);
    EXPECT_EQ(a.sums[0], 0);
    for (int8_t c : a.codes) EXPECT_EQ(c, 0);
  }
}

// The main sweep: every path x odd shapes x row counts, bit-exact.
TEST(Int8, GemmIsExactOnEveryPath) {
  const std::vector<int64_t> row_counts = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 33};
  const std::vector<int64_t> outs = {1, 15, 16, 17, 53, 200};
  const std::vector<int64_t> ins = {1, 3, 37, 64, 130, 4099};
  uint32_t seed = 100;
  for (int64_t out : outs) {
    for (int64_t in : ins) {
      const auto w = int8_weights(out, in, ++seed);
      const auto sw = channel_scales(out, ++seed);
      const auto bias = channel_scales(out, ++seed);
      const Int8Matrix m(w.data(), out, in, in, sw.data());
      for (int64_t rows : row_counts) {
        const auto x = activations(rows, in, ++seed);
        const auto a = quantized(x, rows, in, 0.f, Int8Path::kPortable);
        for (Int8Path path : qk::int8_paths())
          expect_int8_gemm(m, w, sw, a, rows % 2 ? bias.data() : nullptr, path,
                           int8_label(path, rows, out, in));
      }
    }
  }
}

TEST(Int8, LargeBatchIsExact) {
  const int64_t rows = 517, out = 200, in = 1000;
  const auto w = int8_weights(out, in, 7);
  const auto sw = channel_scales(out, 8);
  const Int8Matrix m(w.data(), out, in, in, sw.data());
  const auto x = activations(rows, in, 9);
  for (Int8Path path : qk::int8_paths()) {
    const auto a = quantized(x, rows, in, 0.f, path);
    expect_int8_gemm(m, w, sw, a, sw.data(), path, int8_label(path, rows, out, in));
  }
}

// Activation codes of +-127 everywhere against weights of -128 and 127, at
// the largest in_features: |acc| up to 127 * 128 * 2^17, just below 2^31;
// the unsigned-offset paths wrap in between and must still be exact.
TEST(Int8, ExtremeAccumulatorsAreExact) {
  const int64_t in = qk::kMaxInFeatures, out = 18;
  std::vector<int8_t> w(static_cast<size_t>(out * in));
  for (int64_t o = 0; o < out; ++o)
    std::fill(w.begin() + o * in, w.begin() + (o + 1) * in, o % 2 ? int8_t{127} : int8_t{-128});
  const std::vector<float> sw(static_cast<size_t>(out), 1.f);
  const Int8Matrix m(w.data(), out, in, in, sw.data());
  qk::Int8Activations a;
  a.resize(2, in);
  for (int64_t i = 0; i < in; ++i) {
    a.codes[i] = 127;
    a.codes[a.ld + i] = -127;
  }
  a.sums = {127 * static_cast<int32_t>(in), -127 * static_cast<int32_t>(in)};
  a.scales = {1.f, 1.f};
  for (Int8Path path : qk::int8_paths())
    expect_int8_gemm(m, w, sw, a, nullptr, path, int8_label(path, 2, out, in));
  EXPECT_THROW(Int8Matrix(w.data(), 1, in + 1, in + 1, sw.data()), std::invalid_argument);
}

TEST(Int8, TileRangesCompose) {
  const int64_t rows = 7, out = 100, in = 300;
  const auto w = int8_weights(out, in, 21);
  const auto sw = channel_scales(out, 22);
  const Int8Matrix m(w.data(), out, in, in, sw.data());
  const auto a = quantized(activations(rows, in, 23), rows, in, 0.f, Int8Path::kPortable);
  for (Int8Path path : qk::int8_paths()) {
    std::vector<float> whole(static_cast<size_t>(rows * out)), parts(whole.size());
    m.gemm(a, 0, m.tiles(), whole.data(), out, sw.data(), path);
    for (int64_t t = 0; t < m.tiles(); t += 3)
      m.gemm(a, t, std::min(m.tiles(), t + 3), parts.data(), out, sw.data(), path);
    EXPECT_EQ(0, std::memcmp(whole.data(), parts.data(), whole.size() * sizeof(float)))
        << qk::int8_path_name(path);
  }
}

TEST(Int8, AccessorsAndDequantize) {
  const int64_t out = 53, in = 37;
  const auto w = int8_weights(out, in, 31);
  const auto sw = channel_scales(out, 32);
  const Int8Matrix m(w.data(), out, in, in, sw.data());
  EXPECT_EQ(m.padded_in(), 64);
  EXPECT_EQ(m.tiles(), 4);
  std::vector<float> d(static_cast<size_t>(out * in));
  m.dequantize_rows(0, out, d.data(), in);
  for (int64_t o = 0; o < out; ++o) {
    EXPECT_EQ(m.scale(o), sw[o]);
    for (int64_t i = 0; i < in; ++i) {
      ASSERT_EQ(m.code(o, i), w[o * in + i]);
      ASSERT_EQ(bits_of(d[o * in + i]), bits_of(sw[o] * static_cast<float>(w[o * in + i])));
    }
  }
}

TEST(Int8, RejectsBadInput) {
  const std::vector<int8_t> w(16 * 8, 1);
  std::vector<float> sw(16, 1.f);
  EXPECT_THROW(Int8Matrix(w.data(), 16, 8, 4, sw.data()), std::invalid_argument);
  EXPECT_THROW(Int8Matrix(w.data(), 0, 8, 8, sw.data()), std::invalid_argument);
  sw[3] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(Int8Matrix(w.data(), 16, 8, 8, sw.data()), std::invalid_argument);
  sw[3] = 1.f;
  const Int8Matrix m(w.data(), 16, 8, 8, sw.data());
  const std::vector<float> x(9, 1.f);
  const auto wrong = quantized(x, 1, 9, 0.f, Int8Path::kPortable);
  std::vector<float> y(16);
  EXPECT_THROW(m.gemm(wrong, 0, 1, y.data(), 16, nullptr, Int8Path::kPortable),
               std::invalid_argument);
  const auto a = quantized(x, 1, 8, 0.f, Int8Path::kPortable);
  EXPECT_THROW(m.gemm(a, 0, 2, y.data(), 16, nullptr, Int8Path::kPortable), std::invalid_argument);
  for (Int8Path p : {Int8Path::kAvx2, Int8Path::kAvx512Vnni, Int8Path::kAmx}) {
    if (!qk::int8_path_supported(p)) {
      EXPECT_THROW(m.gemm(a, 0, 1, y.data(), 16, nullptr, p), std::invalid_argument);
    }
  }
  qk::Int8Activations b;
  b.resize(1, 8);
  EXPECT_THROW(qk::quantize_int8(x.data(), 8, 0, 1, -1.f, b, Int8Path::kPortable),
               std::invalid_argument);
}

// ---------------------------------------------------------------------------
// FP8 E4M3
// ---------------------------------------------------------------------------

bool is_nan_code(int c) { return (c & 0x7F) == 0x7F; }

TEST(Fp8, TableIsTheFormat) {
  for (int c = 0; c < 256; ++c) {
    const float v = qk::fp8_e4m3_to_float(static_cast<uint8_t>(c));
    if (is_nan_code(c)) {
      EXPECT_TRUE(std::isnan(v)) << c;
      continue;
    }
    const int e = (c >> 3) & 15, m = c & 7;
    const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
    EXPECT_EQ(static_cast<double>(v), (c & 0x80) ? -mag : mag) << c;
    EXPECT_EQ(std::signbit(v), (c & 0x80) != 0) << c;
  }
  EXPECT_EQ(qk::fp8_e4m3_to_float(0x7E), 448.f);
  EXPECT_EQ(qk::fp8_e4m3_to_float(0xFE), -448.f);
  EXPECT_EQ(qk::fp8_e4m3_to_float(0x38), 1.f);
  EXPECT_EQ(qk::fp8_e4m3_to_float(0x01), std::ldexp(1.f, -9));
  EXPECT_EQ(qk::fp8_e4m3_to_float(0x08), std::ldexp(1.f, -6));
}

// Independent of the encoder's bit manipulation: the nearest of the 127
// non-negative finite values (codes 0x00..0x7E, increasing), ties to the even
// code (even mantissa), saturating at 448; NaN -> 0x7F; the sign bit kept.
uint8_t reference_e4m3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 448.0) return sign | 0x7E;
  int lo = 0, hi = 0x7E;  // value(lo) <= a < value(hi)
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    (qk::fp8_e4m3_to_float(static_cast<uint8_t>(mid)) <= a ? lo : hi) = mid;
  }
  const double dlo = a - qk::fp8_e4m3_to_float(static_cast<uint8_t>(lo));
  const double dhi = qk::fp8_e4m3_to_float(static_cast<uint8_t>(hi)) - a;
  const int code = dlo < dhi ? lo : dhi < dlo ? hi : (lo % 2 == 0 ? lo : hi);
  return static_cast<uint8_t>(sign | code);
}

// Every e4m3 value, every midpoint between neighbours, each +- 1 and 2 ulp,
// both signs, the special values, and float bit patterns in a stride.
std::vector<float> encoder_inputs() {
  std::vector<float> v;
  for (int c = 0; c < 0x7F; ++c) {
    const float a = qk::fp8_e4m3_to_float(static_cast<uint8_t>(c));
    const float b = c < 0x7E ? qk::fp8_e4m3_to_float(static_cast<uint8_t>(c + 1)) : 480.f;
    for (float p : {a, (a + b) / 2}) {  // exact: neighbours differ by a power of 2
      for (int d = -2; d <= 2; ++d) {
        const float q = float_of(bits_of(p) + d);
        if (!(d < 0 && p == 0.f)) v.insert(v.end(), {q, -q});
      }
    }
  }
  const float inf = std::numeric_limits<float>::infinity();
  v.insert(v.end(), {0.f, -0.f, inf, -inf, std::numeric_limits<float>::quiet_NaN(),
                     -std::numeric_limits<float>::quiet_NaN(), 448.f, 464.f, 1e30f,
                     std::numeric_limits<float>::denorm_min(), float_of(0x7F800001u)});
  for (uint64_t u = 0; u <= 0xFFFFFFFFull; u += 251)
    v.push_back(float_of(static_cast<uint32_t>(u)));
  return v;
}

TEST(Fp8, EncoderMatchesNearestValueOnEveryIsa) {
  const std::vector<float> v = encoder_inputs();
  std::vector<uint8_t> ref(v.size());
  for (size_t k = 0; k < v.size(); ++k) {
    ref[k] = reference_e4m3(v[k]);
    ASSERT_EQ(qk::fp8_e4m3_from_float(v[k]), ref[k]) << "f=" << v[k] << " bits=" << bits_of(v[k]);
  }
  for (Isa isa : qk::supported_isas()) {
    std::vector<uint8_t> c(v.size());
    qk::fp8_e4m3_encode(v.data(), static_cast<int64_t>(v.size()), c.data(), isa);
    for (size_t k = 0; k < v.size(); ++k)
      ASSERT_EQ(c[k], ref[k]) << qk::isa_name(isa) << " bits=" << bits_of(v[k]);
    for (size_t n : {1, 5, 8, 13, 17, 31}) {  // tails
      std::vector<uint8_t> t(n);
      qk::fp8_e4m3_encode(v.data() + 3, static_cast<int64_t>(n), t.data(), isa);
      EXPECT_EQ(0, std::memcmp(t.data(), ref.data() + 3, n)) << qk::isa_name(isa);
    }
  }
  EXPECT_EQ(qk::fp8_e4m3_from_float(-0.f), 0x80);
  EXPECT_EQ(qk::fp8_e4m3_from_float(-1e-9f), 0x80);
  EXPECT_EQ(qk::fp8_e4m3_from_float(1e9f), 0x7E);
  EXPECT_EQ(qk::fp8_e4m3_from_float(-std::numeric_limits<float>::infinity()), 0xFE);
  EXPECT_EQ(qk::fp8_e4m3_from_float(std::ldexp(1.f, -10)), 0x00);      // tie -> even (0)
  EXPECT_EQ(qk::fp8_e4m3_from_float(3 * std::ldexp(1.f, -10)), 0x02);  // tie -> even (2)
}

TEST(Fp8, SimdDecodeEqualsTheTable) {
  std::vector<uint8_t> codes(256 + 7);
  for (size_t k = 0; k < codes.size(); ++k) codes[k] = static_cast<uint8_t>(k * 73 + 5);
  for (Isa isa : qk::supported_isas()) {
    for (size_t n : {codes.size(), size_t{1}, size_t{15}, size_t{17}}) {
      std::vector<float> d(n, 1.f);
      qk::fp8_e4m3_decode(codes.data(), static_cast<int64_t>(n), d.data(), isa);
      for (size_t k = 0; k < n; ++k) {
        const float t = qk::fp8_e4m3_to_float(codes[k]);
        if (std::isnan(t))
          ASSERT_TRUE(std::isnan(d[k])) << qk::isa_name(isa) << " code " << int{codes[k]};
        else
          ASSERT_EQ(bits_of(d[k]), bits_of(t)) << qk::isa_name(isa) << " code " << int{codes[k]};
      }
    }
  }
}

// Weights holding every finite code; out and in not multiples of anything.
std::vector<uint8_t> fp8_weights(int64_t out, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> w(static_cast<size_t>(out * in));
  for (size_t k = 0; k < w.size(); ++k) {
    uint8_t c = static_cast<uint8_t>(k < 254 ? k : rng());
    if (is_nan_code(c)) c ^= 1;  // 0x7F -> 0x7E
    w[k] = c;
  }
  return w;
}

TEST(Fp8, DequantizeIsBitIdentical) {
  const int64_t out = 37, in = 29;
  const auto w = fp8_weights(out, in, 41);
  const auto sw = channel_scales(out, 42);
  const Fp8Matrix m(w.data(), out, in, in, sw.data());
  for (Isa isa : qk::supported_isas()) {
    const int64_t ld = m.tiles() * 16 + 1;
    std::vector<float> t(static_cast<size_t>(in * ld), -1.f);
    m.dequantize_transposed(0, m.tiles(), t.data(), ld, isa);
    for (int64_t o = 0; o < m.tiles() * 16; ++o)
      for (int64_t i = 0; i < in; ++i) {
        const float ref = o < out ? sw[o] * qk::fp8_e4m3_to_float(w[o * in + i]) : 0.f;
        ASSERT_EQ(bits_of(t[i * ld + o]), bits_of(ref)) << qk::isa_name(isa) << " o=" << o;
      }
  }
  std::vector<float> rows(static_cast<size_t>(out * in));
  m.dequantize_rows(0, out, rows.data(), in);
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      ASSERT_EQ(m.code(o, i), w[o * in + i]);
      ASSERT_EQ(bits_of(rows[o * in + i]), bits_of(sw[o] * qk::fp8_e4m3_to_float(w[o * in + i])));
    }
}

qk::Fp8Activations fp8_quantized(const std::vector<float>& x, int64_t rows, int64_t in,
                                 float static_scale, Isa isa) {
  qk::Fp8Activations a;
  a.resize(rows, in);
  qk::quantize_fp8(x.data(), in, 0, rows, static_scale, a, isa);
  return a;
}

TEST(Fp8, ActivationCodesMatchTheDefinitionOnEveryIsa) {
  for (int64_t in : {1, 7, 16, 37, 130, 4099}) {
    const int64_t rows = 11;
    std::vector<float> x = activations(rows, in, 50 + static_cast<uint32_t>(in));
    x[3 * in] = std::numeric_limits<float>::quiet_NaN();
    for (float static_scale : {0.f, 0.0123f}) {
      for (Isa isa : qk::supported_isas()) {
        const auto a = fp8_quantized(x, rows, in, static_scale, isa);
        for (int64_t r = 0; r < rows; ++r) {
          const float* xr = x.data() + r * in;
          float s = static_scale, inv = 0.f;
          if (s > 0.f) {
            inv = 1.0f / s;
          } else {
            float m = 0.f;
            for (int64_t i = 0; i < in; ++i) m = std::max(m, std::fabs(xr[i]));
            s = m / 448.0f;
            if (m > 0.f) inv = 448.0f / m;
          }
          ASSERT_EQ(bits_of(a.scales[r]), bits_of(s)) << qk::isa_name(isa) << " row " << r;
          for (int64_t i = 0; i < in; ++i) {
            const uint8_t c = reference_e4m3(xr[i] * inv);
            ASSERT_EQ(a.codes[r * in + i], c) << qk::isa_name(isa) << " in=" << in << " r=" << r;
            const float v = a.values[r * in + i];
            ASSERT_TRUE(std::isnan(v) ? is_nan_code(c) : v == qk::fp8_e4m3_to_float(c));
          }
        }
      }
    }
  }
}

// |y - ref| within the error bound of a float32 sum of `in` fused
// multiply-adds (in * 2^-24 * sum |terms|, with room) plus a few roundings
// of the epilogue, against a double-precision reference on the same codes.
void expect_fp8_gemm(const Fp8Matrix& m, const std::vector<uint8_t>& w,
                     const std::vector<float>& sw, const qk::Fp8Activations& a, const float* bias,
                     const std::vector<float>& y, int64_t ldy, const std::string& what) {
  const int64_t out = m.out_features(), in = m.in_features();
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = 0, mag = 0;
      for (int64_t i = 0; i < in; ++i) {
        const double p =
            static_cast<double>(a.values[r * in + i]) * qk::fp8_e4m3_to_float(w[o * in + i]);
        sum += p;
        mag += std::fabs(p);
      }
      const double scale = static_cast<double>(a.scales[r]) * sw[o];
      const double ref = sum * scale + (bias ? bias[o] : 0.0);
      const double tol = (2.0 * static_cast<double>(in) + 8) * std::ldexp(1.0, -24) * mag * scale +
                         std::ldexp(std::fabs(ref), -21) + 1e-30;
      ASSERT_NEAR(y[r * ldy + o], ref, tol) << what << " r=" << r << " o=" << o;
    }
  }
}

TEST(Fp8, GemmMatchesDoubleReferenceOnEveryIsa) {
  const std::vector<int64_t> row_counts = {1, 2, 3, 5, 7, 9, 16, 33};
  uint32_t seed = 300;
  for (int64_t out : {1, 15, 16, 17, 53, 200}) {
    for (int64_t in : {1, 3, 37, 64, 130, 4099}) {
      const auto w = fp8_weights(out, in, ++seed);
      const auto sw = channel_scales(out, ++seed);
      const auto bias = channel_scales(out, ++seed);
      const Fp8Matrix m(w.data(), out, in, in, sw.data());
      for (int64_t rows : row_counts) {
        const auto x = activations(rows, in, ++seed);
        const auto a = fp8_quantized(x, rows, in, 0.f, Isa::kPortable);
        for (Isa isa : qk::supported_isas()) {
          const int64_t ldy = out + 2;
          std::vector<float> y(static_cast<size_t>(rows * ldy), -1.f);
          const float* b = rows % 2 ? bias.data() : nullptr;
          m.gemm(a, 0, m.tiles(), y.data(), ldy, b, isa);
          const std::string what = std::string(qk::isa_name(isa)) +
                                   " rows=" + std::to_string(rows) + " out=" + std::to_string(out) +
                                   " in=" + std::to_string(in);
          expect_fp8_gemm(m, w, sw, a, b, y, ldy, what);
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t o = out; o < ldy; ++o) ASSERT_EQ(y[r * ldy + o], -1.f) << what;
        }
      }
    }
  }
}

TEST(Fp8, RejectsNanWeights) {
  std::vector<uint8_t> w(16 * 4, 0x38);
  const std::vector<float> sw(16, 1.f);
  w[17] = 0xFF;
  EXPECT_THROW(Fp8Matrix(w.data(), 16, 4, 4, sw.data()), std::invalid_argument);
  w[17] = 0x7F;
  EXPECT_THROW(Fp8Matrix(w.data(), 16, 4, 4, sw.data()), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// ATen glue
// ---------------------------------------------------------------------------

struct TwoThreads {
  int before = at::get_num_threads();
  TwoThreads() { at::set_num_threads(2); }
  ~TwoThreads() { at::set_num_threads(before); }
};

TEST(TorchW8a8, Int8LinearMatchesTheKernels) {
  TwoThreads threads;
  const int64_t out = 70, in = 45;
  const auto w = int8_weights(out, in, 61);
  const auto sw = channel_scales(out, 62);
  const at::Tensor wt = at::from_blob(const_cast<int8_t*>(w.data()), {out, in}, at::kChar);
  const at::Tensor st = at::from_blob(const_cast<float*>(sw.data()), {out, 1}, at::kFloat);
  const at::Tensor bias = at::randn({out});
  const auto x = activations(6, in, 63);
  const at::Tensor xt = at::from_blob(const_cast<float*>(x.data()), {2, 3, in}, at::kFloat);
  for (float s : {0.f, 0.05f}) {
    const qk::aten::Int8Linear layer(wt, st, bias, s > 0 ? std::optional<float>(s) : std::nullopt);
    const at::Tensor y = layer.forward(xt);
    ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, out}));
    const auto a = quantized(x, 6, in, s, Int8Path::kPortable);
    std::vector<float> ref(static_cast<size_t>(6 * out));
    layer.matrix().gemm(a, 0, layer.matrix().tiles(), ref.data(), out, bias.data_ptr<float>(),
                        Int8Path::kPortable);
    EXPECT_EQ(0, std::memcmp(ref.data(), y.contiguous().data_ptr<float>(), ref.size() * 4));
  }
  const qk::aten::Int8Linear layer(wt, st);
  const at::Tensor wd = layer.dequantize();
  EXPECT_TRUE(at::equal(wd, wt.to(at::kFloat) * st));
  const at::Tensor gy = at::randn({4, 1, out});
  EXPECT_TRUE(at::allclose(layer.backward_input(gy), at::matmul(gy, wd), 1e-5, 1e-5));
  // A per-tensor scale is one value for every channel.
  const qk::aten::Int8Linear per_tensor(wt, at::full({1}, 0.5f));
  EXPECT_EQ(per_tensor.matrix().scale(out - 1), 0.5f);
  EXPECT_THROW(qk::aten::Int8Linear(wt, at::ones({3})), std::invalid_argument);
  EXPECT_THROW(qk::aten::Int8Linear(wt.to(at::kFloat), st), std::invalid_argument);
}

TEST(TorchW8a8, Fp8LinearMatchesTheReference) {
  TwoThreads threads;
  const int64_t out = 70, in = 300;
  const auto w = fp8_weights(out, in, 71);
  const auto sw = channel_scales(out, 72);
  const at::Tensor wt = at::from_blob(const_cast<uint8_t*>(w.data()), {out, in}, at::kByte);
  const at::Tensor st = at::from_blob(const_cast<float*>(sw.data()), {out}, at::kFloat);
  const at::Tensor bias = at::randn({out});
  const qk::aten::Fp8Linear layer(wt, st, bias);
  // forward, the kernels, decode + GEMM.
  for (int64_t rows : {3, 40}) {
    const auto x = activations(rows, in, 73 + static_cast<uint32_t>(rows));
    const at::Tensor xt = at::from_blob(const_cast<float*>(x.data()), {rows, in}, at::kFloat);
    const auto a = fp8_quantized(x, rows, in, 0.f, Isa::kPortable);
    for (const at::Tensor& y :
         {layer.forward(xt), layer.forward_kernels(xt), layer.forward_gemm(xt)}) {
      std::vector<float> yv(y.data_ptr<float>(), y.data_ptr<float>() + rows * out);
      expect_fp8_gemm(layer.matrix(), w, sw, a, bias.data_ptr<float>(), yv, out,
                      "rows=" + std::to_string(rows));
    }
  }
  const at::Tensor wd = layer.dequantize();
  const at::Tensor table = at::from_blob(const_cast<float*>(qk::kFp8E4m3Table.v), {256});
  const at::Tensor decoded = at::index_select(table, 0, wt.to(at::kLong).reshape({-1}));
  EXPECT_TRUE(at::equal(wd, decoded.view({out, in}) * st.view({out, 1})));
  const at::Tensor gy = at::randn({5, out});
  EXPECT_TRUE(at::allclose(layer.backward_input(gy), at::matmul(gy, wd), 1e-5, 1e-5));
}

}  // namespace
