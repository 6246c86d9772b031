// Tests of the bit-packing kernels and of the qforge-rtn plugin (quantizer
// org.qforge.rtn and inference layer org.qforge.rtn.layer), loaded through
// the host registry exactly as the CLI loads it.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge_host/base/errors.hpp>
#include <qforge_host/plugins/params.hpp>
#include <qforge_host/plugins/abi_bridge.hpp>
#include <qforge_host/plugins/registry.hpp>
#include <qforge_kernels/bitpack.hpp>

#include <cmath>
#include <cstdlib>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using qforge::kernels::pack_bits;
using qforge::kernels::unpack_bits;
using qforge::kernels::words_for;

// ---------------------------------------------------------------------------
// Bit packing
// ---------------------------------------------------------------------------

TEST(BitPack, WordsFor) {
  EXPECT_EQ(words_for(0, 4), 0);
  EXPECT_EQ(words_for(1, 2), 1);
  EXPECT_EQ(words_for(8, 4), 1);
  EXPECT_EQ(words_for(9, 4), 2);
  EXPECT_EQ(words_for(32, 3), 3);
  EXPECT_EQ(words_for(33, 3), 4);  // 99 bits
  EXPECT_EQ(words_for(11, 3), 2);  // 33 bits
  EXPECT_EQ(words_for(4, 8), 1);
  EXPECT_EQ(words_for(1000, 7), 219);  // 7000 bits = 218.75 words
}

TEST(BitPack, RoundTripAllWidths) {
  std::mt19937 rng(1234);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t n : {1, 7, 31, 33, 1000}) {
      SCOPED_TRACE("bits=" + std::to_string(bits) + " n=" + std::to_string(n));
      std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(dist(rng));
      // Start from garbage and put a sentinel after the last word: pack_bits
      // must overwrite exactly words_for(n, bits) words.
      const int64_t nw = words_for(n, bits);
      std::vector<uint32_t> words(nw + 1, 0xDEADBEEFu);
      pack_bits(codes.data(), n, bits, words.data());
      EXPECT_EQ(words[nw], 0xDEADBEEFu);
      const int64_t used = (n * bits) % 32;
      if (used != 0) {
        EXPECT_EQ(words[nw - 1] >> used, 0u) << "padding bits must be zero";
      }

      std::vector<uint8_t> back(n + 1, 0xAB);
      unpack_bits(words.data(), n, bits, back.data());
      EXPECT_EQ(back[n], 0xAB);
      back.pop_back();
      EXPECT_EQ(back, codes);

      // Independent bit-by-bit decoding of the stream.
      for (int64_t i = 0; i < n; ++i) {
        unsigned v = 0;
        for (int b = 0; b < bits; ++b) {
          const int64_t k = i * bits + b;
          v |= ((words[k / 32] >> (k % 32)) & 1u) << b;
        }
        ASSERT_EQ(v, codes[i]) << "code " << i;
      }
    }
  }
}

TEST(BitPack, KnownWords3BitStraddle) {
  // 11 codes x 3 bits = 33 bits: code 10 (= 0b101) straddles the word
  // boundary, its low two bits (01) at bits 30..31 of word 0, its high bit at
  // bit 0 of word 1.
  const std::vector<uint8_t> codes = {1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 5};
  // 1<<0 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21 | 1<<24 | 2<<27 | 1<<30
  //  = 0x1 + 0x10 + 0xC0 + 0x800 + 0x5000 + 0x30000 + 0x1C0000 + 0x1000000
  //    + 0x10000000 + 0x40000000
  std::vector<uint32_t> words(2, 0xFFFFFFFFu);
  pack_bits(codes.data(), 11, 3, words.data());
  EXPECT_EQ(words[0], 0x511F58D1u);
  EXPECT_EQ(words[1], 0x00000001u);
  std::vector<uint8_t> back(11);
  unpack_bits(words.data(), 11, 3, back.data());
  EXPECT_EQ(back, codes);
}

TEST(BitPack, KnownWords4And2And8Bit) {
  const std::vector<uint8_t> c4 = {1, 2, 3, 4, 5, 6, 7, 8, 0xF};
  std::vector<uint32_t> w4(2);
  pack_bits(c4.data(), 9, 4, w4.data());
  EXPECT_EQ(w4[0], 0x87654321u);
  EXPECT_EQ(w4[1], 0xFu);

  const std::vector<uint8_t> c2 = {3, 0, 1, 2};
  uint32_t w2 = 0xFFFFFFFFu;
  pack_bits(c2.data(), 4, 2, &w2);
  EXPECT_EQ(w2, 0x93u);  // 11 00 01 10 -> 0b10'01'00'11

  const std::vector<uint8_t> c8 = {0x11, 0x22, 0x33, 0x44, 0x55};
  std::vector<uint32_t> w8(2);
  pack_bits(c8.data(), 5, 8, w8.data());
  EXPECT_EQ(w8[0], 0x44332211u);
  EXPECT_EQ(w8[1], 0x55u);
}

TEST(BitPack, RejectsBadWidth) {
  uint8_t c = 0;
  uint32_t w = 0;
  EXPECT_THROW(pack_bits(&c, 1, 1, &w), std::invalid_argument);
  EXPECT_THROW(pack_bits(&c, 1, 9, &w), std::invalid_argument);
  EXPECT_THROW(unpack_bits(&w, 1, 0, &c), std::invalid_argument);
  EXPECT_THROW(unpack_bits(&w, -1, 4, &c), std::invalid_argument);
  EXPECT_NO_THROW(pack_bits(&c, 0, 4, &w));
}

// ---------------------------------------------------------------------------
// The plugin, through the host
// ---------------------------------------------------------------------------

using qforge::host::Component;
using qforge::host::PackedLayer;
using qforge::host::ParamValues;
using qforge::host::PluginError;
using qforge::host::QuantizeRequest;
using qforge::host::QuantResult;
using qforge::host::Registry;

// The in-tree plugin directory of the build this test belongs to.
std::string plugin_dir() { return QFORGE_TEST_PLUGIN_DIR; }

class Rtn : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    registry_ = new Registry();
    registry_->use_default_directories(false);
    registry_->add_directory(plugin_dir());
    registry_->load();
  }
  static void TearDownTestSuite() {
    delete registry_;
    registry_ = nullptr;
  }
  // Checked per test (a failure in SetUpTestSuite reads as "skipped" in CTest).
  void SetUp() override {
    ASSERT_NE(registry_, nullptr);
    quantizer_ = registry_->find("org.qforge.rtn");
    layer_ = registry_->find("org.qforge.rtn.layer");
    std::string refusals;
    for (const auto& r : registry_->refusals()) refusals += "\n  " + r.library + ": " + r.reason;
    ASSERT_NE(quantizer_, nullptr) << "org.qforge.rtn not found in " << plugin_dir() << refusals;
    ASSERT_NE(layer_, nullptr) << "org.qforge.rtn.layer not found in " << plugin_dir() << refusals;
  }

  QuantResult quantize(const at::Tensor& w, const at::Tensor& bias,
                       const std::map<std::string, std::string>& overrides) const {
    ParamValues params(quantizer_->desc->id, quantizer_->desc->params,
                       quantizer_->desc->param_count, overrides);
    QuantizeRequest req;
    req.layer_name = "test.layer";
    req.weight = w;
    req.bias = bias;
    return qforge::host::quantize_layer(*quantizer_, req, params);
  }

  static Registry* registry_;
  const Component* quantizer_ = nullptr;
  const Component* layer_ = nullptr;
};
Registry* Rtn::registry_ = nullptr;

at::Tensor gaussian(int64_t rows, int64_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 1.f);
  at::Tensor t = at::empty({rows, cols}, at::kFloat);
  float* p = t.data_ptr<float>();
  for (int64_t k = 0; k < rows * cols; ++k) p[k] = dist(rng);
  return t;
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

// Unpacks qweight [out, words] into integer codes [out, in].
std::vector<uint8_t> unpack_qweight(const at::Tensor& qweight, int64_t out, int64_t in,
                                    int bits) {
  at::Tensor q = qweight.contiguous();
  std::vector<uint8_t> codes(out * in);
  const auto* words = reinterpret_cast<const uint32_t*>(q.data_ptr<int32_t>());
  for (int64_t r = 0; r < out; ++r)
    unpack_bits(words + r * q.size(1), in, bits, codes.data() + r * in);
  return codes;
}

TEST_F(Rtn, Describes) {
  const qforge_component_desc& d = *quantizer_->desc;
  EXPECT_EQ(d.kind, QFORGE_COMPONENT_QUANTIZER);
  ASSERT_EQ(d.param_count, 3u);
  EXPECT_STREQ(d.params[0]->name, "bits");
  EXPECT_STREQ(d.params[0]->default_value, "4");
  EXPECT_EQ(d.params[0]->min, 2);
  EXPECT_EQ(d.params[0]->max, 8);
  EXPECT_STREQ(d.params[1]->name, "group_size");
  EXPECT_STREQ(d.params[1]->default_value, "128");
  EXPECT_EQ(d.params[1]->min, -1);
  EXPECT_STREQ(d.params[2]->name, "sym");
  EXPECT_EQ(d.params[2]->type, QFORGE_PARAM_BOOL);
  EXPECT_STREQ(d.params[2]->default_value, "true");
  ASSERT_NE(quantizer_->quantizer(), nullptr);
  EXPECT_STREQ(quantizer_->quantizer()->output_formats[0], "org.qforge.rtn/1");
  ASSERT_NE(layer_->inference_layer(), nullptr);
  EXPECT_STREQ(layer_->inference_layer()->formats[0], "org.qforge.rtn/1");
  EXPECT_EQ(registry_->find_inference_layer("org.qforge.rtn/1"), layer_);
}

// The brute-force reference: scale/zero per group exactly as the GPTQ
// reference quantizer, in float32; each code by exhaustive search for the
// grid point nearest to w/scale (ties to the even offset from zero, which is
// torch.round's half-to-even).
TEST_F(Rtn, MatchesBruteForceReference) {
  const int64_t out = 64, in = 300;
  at::Tensor w = gaussian(out, in, 42);
  {
    auto a = w.accessor<float, 2>();
    for (int64_t j = 0; j < in; ++j) a[0][j] = 0.f;                 // all-zero row
    for (int64_t j = 0; j < in; ++j) a[1][j] = std::fabs(a[1][j]);  // non-negative row
    // Exact ties for 4 bits (scale 1, zero 8): every group holds -7.5 and 7.5.
    const float pattern[] = {-7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 3.5f, 7.5f};
    for (int64_t j = 0; j < in; ++j) a[2][j] = pattern[j % 8];
    for (int64_t j = 0; j < in; ++j) a[3][j] = 1e-3f * a[3][j];     // small range
  }

  for (int bits = 2; bits <= 8; ++bits) {
    for (bool sym : {true, false}) {
      for (int64_t gs : {int64_t{128}, int64_t{-1}, int64_t{7}, int64_t{300}, int64_t{512}}) {
        SCOPED_TRACE("bits=" + std::to_string(bits) + " sym=" + std::to_string(sym) +
                     " group_size=" + std::to_string(gs));
        QuantResult r = quantize(w, at::Tensor(), {{"bits", std::to_string(bits)},
                                                   {"group_size", std::to_string(gs)},
                                                   {"sym", sym ? "true" : "false"}});
        ASSERT_EQ(r.format, "org.qforge.rtn/1");
        const auto meta = nlohmann::json::parse(r.metadata);
        const int64_t g_eff = gs == -1 ? in : gs;
        EXPECT_EQ(meta.at("bits").get<int>(), bits);
        EXPECT_EQ(meta.at("group_size").get<int64_t>(), g_eff);
        EXPECT_EQ(meta.at("sym").get<bool>(), sym);
        EXPECT_EQ(meta.at("in_features").get<int64_t>(), in);
        EXPECT_EQ(meta.at("out_features").get<int64_t>(), out);
        const int64_t groups = (in + g_eff - 1) / g_eff;

        ASSERT_EQ(r.tensors.count("bias"), 0u);
        const at::Tensor qweight = r.tensors.at("qweight");
        const at::Tensor scales = r.tensors.at("scales").contiguous();
        const at::Tensor zeros = r.tensors.at("zeros").contiguous();
        ASSERT_EQ(qweight.scalar_type(), at::kInt);
        ASSERT_EQ(qweight.sizes(), (std::vector<int64_t>{out, words_for(in, bits)}));
        ASSERT_EQ(scales.scalar_type(), at::kFloat);
        ASSERT_EQ(scales.sizes(), (std::vector<int64_t>{out, groups}));
        ASSERT_EQ(zeros.scalar_type(), at::kByte);
        ASSERT_EQ(zeros.sizes(), (std::vector<int64_t>{out, groups}));
        const at::Tensor deq = r.dequantized.contiguous();
        ASSERT_EQ(deq.sizes(), w.sizes());

        const std::vector<uint8_t> codes = unpack_qweight(qweight, out, in, bits);
        const float maxq = static_cast<float>((1 << bits) - 1);
        auto wa = w.accessor<float, 2>();
        auto da = deq.accessor<float, 2>();
        auto sa = scales.accessor<float, 2>();
        auto za = zeros.accessor<uint8_t, 2>();
        int64_t mismatches = 0, checked = 0;
        for (int64_t r0 = 0; r0 < out; ++r0) {
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t j0 = g * g_eff, j1 = std::min(in, j0 + g_eff);
            float xmin = 0.f, xmax = 0.f;
            for (int64_t j = j0; j < j1; ++j) {
              xmin = std::min(xmin, wa[r0][j]);
              xmax = std::max(xmax, wa[r0][j]);
            }
            const bool clipped_sym = sym && xmin == 0.f && xmax > 0.f;  // GPTQ quirk
            if (sym) {
              xmax = std::max(std::fabs(xmin), xmax);
              if (xmin < 0.f) xmin = -xmax;
            }
            if (xmin == 0.f && xmax == 0.f) {
              xmin = -1.f;
              xmax = 1.f;
            }
            const float scale = (xmax - xmin) / maxq;
            const float zero = sym ? (maxq + 1.f) / 2.f : std::nearbyint(-xmin / scale);
            ASSERT_EQ(sa[r0][g], scale) << "row " << r0 << " group " << g;
            ASSERT_EQ(static_cast<float>(za[r0][g]), zero) << "row " << r0 << " group " << g;

            for (int64_t j = j0; j < j1; ++j) {
              const float v = wa[r0][j] / scale;
              int best = -1;
              double best_d = 0;
              for (int q = 0; q <= static_cast<int>(maxq); ++q) {
                const double off = q - static_cast<double>(zero);
                const double d = std::fabs(static_cast<double>(v) - off);
                const bool even = std::fmod(std::fabs(off), 2.0) == 0.0;
                if (best < 0 || d < best_d || (d == best_d && even)) {
                  best = q;
                  best_d = d;
                }
              }
              const uint8_t got = codes[r0 * in + j];
              if (got != best && ++mismatches <= 5)
                ADD_FAILURE() << "code mismatch at [" << r0 << ", " << j << "]: w=" << wa[r0][j]
                              << " scale=" << scale << " zero=" << zero << " plugin=" << int(got)
                              << " reference=" << best;
              // The dequantized weight is scale * (q - zero), bit for bit.
              const float expect = scale * (static_cast<float>(got) - zero);
              if (da[r0][j] != expect && ++mismatches <= 5)
                ADD_FAILURE() << "dequantized [" << r0 << ", " << j << "] = " << da[r0][j]
                              << ", scale*(q-zero) = " << expect;
              if (!clipped_sym) {
                // Round-to-nearest error: at most half a step (plus float32
                // rounding of w/scale and of the product, relative to |w|).
                const double err = std::fabs(static_cast<double>(wa[r0][j]) - da[r0][j]);
                const double bound =
                    0.5 * scale * (1 + 1e-5) + std::ldexp(std::fabs(wa[r0][j]), -22);
                if (err > bound && ++mismatches <= 5)
                  ADD_FAILURE() << "error " << err << " > " << bound << " at [" << r0 << ", "
                                << j << "]";
                ++checked;
              }
            }
          }
        }
        EXPECT_EQ(mismatches, 0);
        EXPECT_GT(checked, 0);
        ASSERT_EQ(r.metrics.count("max_abs_error"), 1u);
        EXPECT_FLOAT_EQ(r.metrics.at("max_abs_error"),
                        (deq - w).abs().max().item<float>());
      }
    }
  }
}

TEST_F(Rtn, TiesRoundHalfToEven) {
  // One 4-bit symmetric group: xmax = 7.5, scale = 1, zero = 8; w/scale ties
  // at .5 go to the even integer as torch.round does.
  at::Tensor w = at::tensor({-7.5f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 7.5f, 0.f}).reshape({1, 8});
  QuantResult r = quantize(w, at::Tensor(), {{"bits", "4"}, {"group_size", "-1"}});
  const auto codes = unpack_qweight(r.tensors.at("qweight"), 1, 8, 4);
  // round(v) + 8, clamped to [0, 15]: -8, 0, 2, 2, -0, -2, 8 (clamped to 15), 0
  const std::vector<uint8_t> expect = {0, 8, 10, 10, 8, 6, 15, 8};
  EXPECT_EQ(codes, expect);
  EXPECT_EQ(r.tensors.at("scales").item<float>(), 1.f);
  EXPECT_EQ(r.tensors.at("zeros").item<uint8_t>(), 8);
}

TEST_F(Rtn, InferenceLayerMatchesDequantizedMatmul) {
  const int64_t out = 48, in = 200;
  const at::Tensor w = gaussian(out, in, 7);
  const at::Tensor bias = gaussian(1, out, 8).reshape({out});
  for (bool with_bias : {true, false}) {
    for (const char* gs : {"64", "-1"}) {
      SCOPED_TRACE(std::string("bias=") + (with_bias ? "yes" : "no") + " group_size=" + gs);
      QuantResult r = quantize(w, with_bias ? bias : at::Tensor(),
                               {{"bits", "3"}, {"group_size", gs}, {"sym", "false"}});
      EXPECT_EQ(r.tensors.count("bias"), with_bias ? 1u : 0u);
      PackedLayer layer(*layer_, r);
      EXPECT_EQ(layer.out_features(), out);
      EXPECT_EQ(layer.in_features(), in);

      const at::Tensor wq = r.dequantized;
      EXPECT_TRUE(at::equal(layer.dequantize(), wq)) << "dequantize must be bit-identical";

      const std::vector<std::vector<int64_t>> shapes = {{1, in}, {5, in}, {2, 3, in}, {in}};
      uint32_t seed = 100;
      for (const auto& shape : shapes) {
        at::Tensor x = gaussian(1, numel(shape), seed++).reshape(shape);
        at::Tensor y = layer.forward(x);
        at::Tensor ref = at::matmul(x.to(at::kDouble), wq.to(at::kDouble).t());
        if (with_bias) ref = ref + bias.to(at::kDouble);
        auto ys = y.sizes().vec();
        auto rs = ref.sizes().vec();
        ASSERT_EQ(ys, rs);
        const double rel = (y.to(at::kDouble) - ref).norm().item<double>() /
                           ref.norm().item<double>();
        EXPECT_LT(rel, 1e-4) << "forward, x of " << x.dim() << " dims";
        EXPECT_TRUE(at::allclose(y.to(at::kDouble), ref, 1e-4, 1e-4));

        // backward_input: grad_x = grad_y W
        auto gshape = shape;
        gshape.back() = out;
        at::Tensor gy = gaussian(1, numel(gshape), seed++).reshape(gshape);
        at::Tensor gx = layer.backward_input(gy);
        at::Tensor gref = at::matmul(gy.to(at::kDouble), wq.to(at::kDouble));
        ASSERT_EQ(gx.sizes().vec(), gref.sizes().vec());
        EXPECT_TRUE(at::allclose(gx.to(at::kDouble), gref, 1e-4, 1e-4)) << "backward_input";
      }
    }
  }
}

TEST_F(Rtn, ForwardAndBackwardOverSeveralBlocks) {
  // 600 x 2100 floats is more than the layer's 2^20-float dequantization
  // block, so forward/backward run over two row blocks (499 + 101 rows);
  // 2100 = 16 * 128 + 52 also leaves a short last group.
  const int64_t out = 600, in = 2100;
  const at::Tensor w = gaussian(out, in, 11);
  const at::Tensor bias = gaussian(1, out, 12).reshape({out});
  QuantResult r = quantize(w, bias, {{"bits", "4"}, {"group_size", "128"}});
  PackedLayer layer(*layer_, r);
  const at::Tensor wq = r.dequantized.to(at::kDouble);
  EXPECT_TRUE(at::equal(layer.dequantize(), r.dequantized));
  for (int64_t batch : {1, 5}) {
    const at::Tensor x = gaussian(batch, in, 13);
    const at::Tensor ref = at::matmul(x.to(at::kDouble), wq.t()) + bias.to(at::kDouble);
    EXPECT_TRUE(at::allclose(layer.forward(x).to(at::kDouble), ref, 1e-4, 1e-4));
    const at::Tensor gy = gaussian(batch, out, 14);
    const at::Tensor gref = at::matmul(gy.to(at::kDouble), wq);
    EXPECT_TRUE(at::allclose(layer.backward_input(gy).to(at::kDouble), gref, 1e-4, 1e-4));
  }
  // An empty batch is fine too.
  EXPECT_EQ(layer.forward(at::zeros({0, in})).sizes(), (std::vector<int64_t>{0, out}));
}

TEST_F(Rtn, BadPackedInputIsAnErrorNotACrash) {
  const at::Tensor w = gaussian(16, 70, 3);
  const at::Tensor bias = gaussian(1, 16, 4).reshape({16});
  const QuantResult good = quantize(w, bias, {{"bits", "3"}, {"group_size", "32"}});
  EXPECT_NO_THROW(PackedLayer(*layer_, good));

  auto expect_refused = [&](QuantResult bad, const std::string& what) {
    SCOPED_TRACE(what);
    try {
      PackedLayer layer(*layer_, bad);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const PluginError& e) {
      EXPECT_NE(std::string(e.what()), "") << what;
    }
  };
  auto with_meta = [&](const std::string& meta) {
    QuantResult r = good;
    r.metadata = meta;
    return r;
  };
  auto with_tensor = [&](const std::string& name, const at::Tensor& t) {
    QuantResult r = good;
    r.tensors[name] = t;
    return r;
  };
  auto without = [&](const std::string& name) {
    QuantResult r = good;
    r.tensors.erase(name);
    return r;
  };
  const at::Tensor qw = good.tensors.at("qweight");
  const at::Tensor sc = good.tensors.at("scales");
  const at::Tensor zp = good.tensors.at("zeros");

  expect_refused(with_meta("{not json"), "unparsable metadata");
  expect_refused(with_meta("[1, 2]"), "metadata not an object");
  expect_refused(with_meta(R"({"group_size":32,"sym":true,"in_features":70,"out_features":16})"),
                 "bits missing");
  expect_refused(
      with_meta(R"({"bits":9,"group_size":32,"sym":true,"in_features":70,"out_features":16})"),
      "bits out of range");
  expect_refused(
      with_meta(R"({"bits":"3","group_size":32,"sym":true,"in_features":70,"out_features":16})"),
      "bits not an integer");
  expect_refused(
      with_meta(R"({"bits":3,"group_size":0,"sym":true,"in_features":70,"out_features":16})"),
      "group_size 0");
  expect_refused(
      with_meta(R"({"bits":3,"group_size":32,"sym":1,"in_features":70,"out_features":16})"),
      "sym not a boolean");
  expect_refused(
      with_meta(R"({"bits":3,"group_size":32,"sym":true,"in_features":80,"out_features":16})"),
      "in_features disagrees with qweight");
  expect_refused(
      with_meta(R"({"bits":3,"group_size":16,"sym":true,"in_features":70,"out_features":16})"),
      "group_size disagrees with scales");
  expect_refused(
      with_meta(R"({"bits":3,"group_size":32,"sym":true,"in_features":70,"out_features":8})"),
      "out_features disagrees with the tensors");
  expect_refused(with_meta(R"({"bits":3,"group_size":32,"sym":true,"in_features":70,)"
                           R"("out_features":18446744073709551615})"),
                 "huge out_features");
  expect_refused(
      with_meta(R"({"bits":4,"group_size":32,"sym":true,"in_features":70,"out_features":16})"),
      "bits disagrees with qweight");
  expect_refused(with_tensor("qweight", qw.narrow(1, 0, qw.size(1) - 1).contiguous()),
                 "truncated qweight");
  expect_refused(with_tensor("qweight", qw.reshape({-1})), "flattened qweight");
  expect_refused(with_tensor("qweight", qw.to(at::kLong)), "qweight int64");
  expect_refused(with_tensor("scales", sc.narrow(1, 0, 2).contiguous()), "scales too narrow");
  expect_refused(with_tensor("scales", sc.to(at::kDouble)), "scales float64");
  expect_refused(with_tensor("zeros", zp.to(at::kInt)), "zeros int32");
  expect_refused(with_tensor("zeros", at::full_like(zp, 8)), "zeros above maxq");
  expect_refused(with_tensor("bias", at::zeros({15})), "bias of the wrong length");
  expect_refused(with_tensor("extra", at::zeros({1})), "unknown tensor");
  expect_refused(without("qweight"), "qweight missing");
  expect_refused(without("scales"), "scales missing");
  expect_refused(without("zeros"), "zeros missing");
  {
    QuantResult r = good;
    r.format = "org.qforge.gptq/1";
    try {
      PackedLayer layer(*layer_, r);
      ADD_FAILURE() << "accepted a foreign format";
    } catch (const std::exception&) {
    }
  }
}

TEST_F(Rtn, GroupSizeZeroIsRejected) {
  const at::Tensor w = gaussian(4, 32, 5);
  try {
    quantize(w, at::Tensor(), {{"group_size", "0"}});
    FAIL() << "group_size 0 accepted";
  } catch (const PluginError& e) {
    EXPECT_EQ(e.code(), QFORGE_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(e.what()).find("group_size"), std::string::npos) << e.what();
  }
}

TEST_F(Rtn, RejectsBadWeights) {
  at::Tensor w = gaussian(4, 32, 6);
  w[1][3] = std::nanf("");
  EXPECT_THROW(quantize(w, at::Tensor(), {}), PluginError);
  w[1][3] = INFINITY;
  EXPECT_THROW(quantize(w, at::Tensor(), {}), PluginError);
  w[1][3] = -INFINITY;
  EXPECT_THROW(quantize(w, at::Tensor(), {{"sym", "false"}}), PluginError);
  EXPECT_THROW(quantize(gaussian(4, 32, 6), at::zeros({5}), {}), PluginError);
}

TEST_F(Rtn, DefaultsAreFourBitSymmetricGroup128) {
  const at::Tensor w = gaussian(8, 256, 9);
  QuantResult r = quantize(w, at::Tensor(), {});
  const auto meta = nlohmann::json::parse(r.metadata);
  EXPECT_EQ(meta.at("bits").get<int>(), 4);
  EXPECT_EQ(meta.at("group_size").get<int>(), 128);
  EXPECT_TRUE(meta.at("sym").get<bool>());
  EXPECT_EQ(r.tensors.at("qweight").sizes(), (std::vector<int64_t>{8, 32}));
  EXPECT_TRUE(at::all(r.tensors.at("zeros") == 8).item<bool>());
  // 4-bit RTN of a Gaussian: error well under the weights' scale.
  const double rel = (r.dequantized - w).norm().item<double>() / w.norm().item<double>();
  EXPECT_LT(rel, 0.15);
  EXPECT_GT(rel, 0.0);
}

}  // namespace
