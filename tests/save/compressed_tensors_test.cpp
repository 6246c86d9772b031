// compressed-tensors codec (host/src/save/compressed_tensors_codec.*).
// pack-quantized: the §4.7 worked example, an independent decoder written
// here from <qforge/formats/ct_pack_quantized_v1.h>, pack -> unpack round
// trips, refusals of malformed tensors, the AutoGPTQ v1 fixtures converted
// (§4.8), and quantization_config (the §2.8 example of
// ../shared/research/llm-compressor.md, per-layer overrides, fused shards).
// int-/float-/naive-quantized (ct_naive_quantized_v1.h): W8A8, FP8,
// FP8_DYNAMIC and FP8 weight-only written, decoded independently and read
// back, their configs as written out by hand, malformed results, tensors and
// args refused, mixed-precision with pack-quantized.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "compressed_tensors_codec.hpp"
#include "ct_decoder.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace ct = qforge::host::ct;
using qforge::test::ct_decoder::decode;
using qforge::test::ct_decoder::Decoded;
using nlohmann::json;
using nlohmann::ordered_json;
using Tensors = std::vector<std::pair<std::string, at::Tensor>>;

namespace {

enum class Order { natural, static_order, shuffled };

// A random affine linear: float16-exact scales, integer zeros.
ct::AffineLinear make_linear(int bits, int64_t n, int64_t k, int64_t group_size, bool sym,
                             Order order, uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t maxq = (int64_t{1} << bits) - 1;
  const bool channel = group_size == -1 || group_size >= k;
  const int64_t g_eff = channel ? k : group_size;
  const int64_t groups = (k + g_eff - 1) / g_eff;
  ct::AffineLinear l;
  l.bits = bits;
  l.out_features = n;
  l.in_features = k;
  l.group_size = group_size;
  l.symmetric = sym;
  l.act_order = order != Order::natural;
  std::uniform_int_distribution<int32_t> code(0, static_cast<int32_t>(maxq));
  l.codes = at::empty({n, k}, at::kInt);
  for (int64_t i = 0; i < n * k; ++i) l.codes.data_ptr<int32_t>()[i] = code(rng);
  std::uniform_real_distribution<float> scale(1e-3f, 2e-2f);
  l.scales = at::empty({groups, n}, at::kFloat);
  for (int64_t i = 0; i < groups * n; ++i) l.scales.data_ptr<float>()[i] = scale(rng);
  l.scales = l.scales.to(at::kHalf).to(at::kFloat);
  l.zeros = at::full({groups, n}, static_cast<float>(1 << (bits - 1)), at::kFloat);
  if (!sym)
    for (int64_t i = 0; i < groups * n; ++i) l.zeros.data_ptr<float>()[i] = static_cast<float>(code(rng));
  l.g_idx = at::empty({k}, at::kInt);
  std::vector<int64_t> perm(static_cast<size_t>(k));
  std::iota(perm.begin(), perm.end(), 0);
  if (order == Order::shuffled) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t i = 0; i < k; ++i) l.g_idx.data_ptr<int32_t>()[perm[i]] = static_cast<int32_t>(i / g_eff);
  return l;
}

std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const qforge::host::UsageError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    return m;
  }
  ADD_FAILURE() << "no UsageError";
  return {};
}

std::map<std::string, at::Tensor> by_suffix(const Tensors& tensors, const std::string& prefix) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, t] : tensors) m[name.substr(prefix.size() + 1)] = t;
  return m;
}

void expect_same(const ct::AffineLinear& a, const ct::AffineLinear& b) {
  EXPECT_EQ(a.bits, b.bits);
  EXPECT_EQ(a.out_features, b.out_features);
  EXPECT_EQ(a.in_features, b.in_features);
  EXPECT_TRUE(at::equal(a.codes, b.codes));
  EXPECT_TRUE(at::equal(a.scales, b.scales));
  EXPECT_TRUE(at::equal(a.zeros, b.zeros));
  EXPECT_TRUE(at::equal(a.g_idx, b.g_idx));
  EXPECT_EQ(a.symmetric, b.symmetric);
}

// Every object's keys in sorted order, recursively (json.dumps(sort_keys=True)).
void expect_sorted(const ordered_json& j, const std::string& where = "") {
  if (j.is_object()) {
    std::string last;
    for (const auto& [k, v] : j.items()) {
      EXPECT_LT(last, k) << where;
      last = k;
      expect_sorted(v, where + "." + k);
    }
  } else if (j.is_array()) {
    for (const auto& v : j) expect_sorted(v, where);
  }
}

}  // namespace

// ------------------------------------------------------------------- (a) §4.7 --
TEST(CompressedTensors, WorkedExampleWord) {
  // codes (-8, -1, 0, 7, 1, 2, 3, 4) -> nibbles (0, 7, 8, 15, 9, 10, 11, 12) -> 0xCBA9F870.
  ct::AffineLinear l = make_linear(4, 1, 8, 128, true, Order::natural, 1);
  const std::vector<int32_t> q = {-8, -1, 0, 7, 1, 2, 3, 4};
  for (int j = 0; j < 8; ++j) l.codes[0][j] = q[j] + 8;
  const Tensors t = ct::pack("model.layers.0.mlp.gate_proj", l);
  ASSERT_EQ(t[0].first, "model.layers.0.mlp.gate_proj.weight_packed");
  EXPECT_EQ(static_cast<uint32_t>(t[0].second[0][0].item<int32_t>()), 0xCBA9F870u);
  EXPECT_LT(t[0].second[0][0].item<int32_t>(), 0);  // top nibble >= 8: negative int32
}

TEST(CompressedTensors, WorkedExampleShapesAndZeroPoints) {
  // §4.7 scaled down: W4 g128 over [out 48, in 512]: packed [48, 64], scale
  // [48, 4], asymmetric zero points [6, 4] with word (k, g) nibble i = zero of
  // row 8k + i.
  ct::AffineLinear l = make_linear(4, 48, 512, 128, false, Order::natural, 2);
  for (int r = 0; r < 8; ++r) l.zeros[1][r] = static_cast<float>(r + 1);
  const Tensors t = ct::pack("p", l);
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0].second.sizes(), at::IntArrayRef({48, 64}));
  EXPECT_EQ(t[1].first, "p.weight_scale");
  EXPECT_EQ(t[1].second.scalar_type(), at::kHalf);
  EXPECT_EQ(t[1].second.sizes(), at::IntArrayRef({48, 4}));
  EXPECT_EQ(t[2].first, "p.weight_shape");
  EXPECT_EQ(t[2].second.scalar_type(), at::kLong);
  EXPECT_EQ(t[2].second[0].item<int64_t>(), 48);
  EXPECT_EQ(t[2].second[1].item<int64_t>(), 512);
  EXPECT_EQ(t[3].first, "p.weight_zero_point");
  EXPECT_EQ(t[3].second.sizes(), at::IntArrayRef({6, 4}));
  EXPECT_EQ(static_cast<uint32_t>(t[3].second[0][1].item<int32_t>()), 0x87654321u);
}

// ------------------------------------------- (b) independent decoder, (c) unpack --
struct Case {
  int bits;
  bool sym;
  int64_t group_size;  // -1: channel
  Order order;
};

class PackDecode : public ::testing::TestWithParam<Case> {};

TEST_P(PackDecode, IndependentDecoderAndRoundTrip) {
  const Case c = GetParam();
  for (const auto& [n, k] : std::vector<std::pair<int64_t, int64_t>>{{37, 75}, {64, 256}, {5, 33}}) {
    SCOPED_TRACE("N=" + std::to_string(n) + " K=" + std::to_string(k));
    const ct::AffineLinear l =
        make_linear(c.bits, n, k, c.group_size, c.sym, c.order, static_cast<uint32_t>(n * 131 + k + c.bits));
    const ct::Scheme s = ct::scheme_of(l);
    const bool channel = c.group_size == -1 || c.group_size >= k;
    EXPECT_EQ(s.strategy, channel ? ct::Strategy::channel : ct::Strategy::group);
    const bool shuffled = c.order == Order::shuffled && !channel;
    EXPECT_EQ(s.actorder, shuffled ? ct::ActOrder::group
                          : c.order != Order::natural && !channel ? ct::ActOrder::weight
                                                                  : ct::ActOrder::none);
    const Tensors t = ct::pack("model.layers.1.self_attn.o_proj", l);
    const Decoded d = decode(t, "model.layers.1.self_attn.o_proj", c.bits, c.sym,
                             channel ? -1 : c.group_size, shuffled);
    EXPECT_TRUE(at::equal(d.codes, l.codes));
    EXPECT_TRUE(at::equal(d.scales, l.scales));
    EXPECT_TRUE(at::equal(d.zeros, l.zeros));
    EXPECT_TRUE(at::equal(d.g_idx, l.g_idx));

    const ct::AffineLinear u = ct::unpack(by_suffix(t, "model.layers.1.self_attn.o_proj"), s);
    expect_same(u, l);
    EXPECT_EQ(u.group_size, channel ? -1 : c.group_size);
    EXPECT_EQ(ct::scheme_of(u), s);
  }
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int bits : {2, 3, 4, 8})
    for (bool sym : {true, false}) {
      cases.push_back({bits, sym, 16, Order::natural});
      cases.push_back({bits, sym, 16, Order::static_order});
      cases.push_back({bits, sym, 16, Order::shuffled});
      cases.push_back({bits, sym, -1, Order::natural});
      cases.push_back({bits, sym, 4096, Order::static_order});  // >= in: channel, no actorder
    }
  for (int bits : {5, 6, 7}) cases.push_back({bits, false, 32, Order::shuffled});
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Schemes, PackDecode, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           const Case& c = i.param;
                           return "b" + std::to_string(c.bits) + (c.sym ? "_sym" : "_asym") +
                                  (c.group_size == -1 ? "_channel" : "_g" + std::to_string(c.group_size)) +
                                  (c.order == Order::natural ? "" :
                                   c.order == Order::static_order ? "_static" : "_shuffled");
                         });

TEST(CompressedTensors, ScaleDtypes) {
  const ct::AffineLinear l = make_linear(4, 9, 40, 8, false, Order::natural, 7);
  for (auto dtype : {at::kBFloat16, at::kFloat}) {
    const Tensors t = ct::pack("x", l, dtype);
    EXPECT_EQ(t[1].second.scalar_type(), dtype);
    const ct::AffineLinear u = ct::unpack(by_suffix(t, "x"), ct::scheme_of(l));
    EXPECT_TRUE(at::equal(u.scales, l.scales.to(dtype).to(at::kFloat)));
    EXPECT_TRUE(at::equal(u.codes, l.codes));
  }
  ct::AffineLinear big = l;
  big.scales = l.scales.clone();
  big.scales[0][0] = 1e6f;
  EXPECT_NE(refusal([&] { ct::pack("x", big, at::kHalf); }).find("float16"), std::string::npos);
  big.scales[0][0] = 1e-9f;
  EXPECT_NE(refusal([&] { ct::pack("x", big, at::kHalf); }).find("becomes 0"), std::string::npos);
  EXPECT_NO_THROW(ct::pack("x", big, at::kFloat));
}

// ------------------------------------------------------ scheme_of refusals --
TEST(CompressedTensors, SchemeOfRefusesWhatCannotBeExpressed) {
  const ct::AffineLinear base = make_linear(4, 6, 32, 8, false, Order::natural, 3);
  auto with = [&](const std::function<void(ct::AffineLinear&)>& edit) {
    ct::AffineLinear l = base;
    l.codes = base.codes.clone();
    l.scales = base.scales.clone();
    l.zeros = base.zeros.clone();
    l.g_idx = base.g_idx.clone();
    edit(l);
    return refusal([&] { ct::scheme_of(l); });
  };
  EXPECT_NE(with([](ct::AffineLinear& l) { l.zeros[0][0] = 2.5f; }).find("integer"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.zeros[0][0] = 16.f; }).find("[0, 15]"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.zeros[0][0] = -1.f; }).find("[0, 15]"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.symmetric = true; }).find("symmetric"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.codes[0][0] = 16; }).find("codes"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.bits = 9; }).find("bits"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.g_idx[0] = 1; }).find("g_idx"), std::string::npos);  // 9 cols in group 1
  EXPECT_NE(with([](ct::AffineLinear& l) { l.g_idx[0] = 4; }).find("g_idx"), std::string::npos);  // out of range
  EXPECT_NE(with([](ct::AffineLinear& l) {  // a valid relabelling, but no act-order claim
              std::swap_ranges(l.g_idx.data_ptr<int32_t>(), l.g_idx.data_ptr<int32_t>() + 1,
                               l.g_idx.data_ptr<int32_t>() + 8);
            }).find("act_order"),
            std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.group_size = 10; }).find("groups"), std::string::npos);
  EXPECT_NE(with([](ct::AffineLinear& l) { l.scales = l.scales.to(at::kHalf); }).find("scales"), std::string::npos);
}

// ------------------------------------------------ (d) malformed tensors --
TEST(CompressedTensors, UnpackRefusesMalformedTensors) {
  const ct::AffineLinear l = make_linear(3, 10, 70, 16, false, Order::shuffled, 4);
  const ct::Scheme s = ct::scheme_of(l);
  ASSERT_EQ(s.actorder, ct::ActOrder::group);
  const auto good = by_suffix(ct::pack("m", l), "m");
  ASSERT_NO_THROW(ct::unpack(good, s));
  auto with = [&](const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    auto m = good;
    for (auto& [k, v] : m) v = v.clone();
    edit(m);
    return refusal([&] { ct::unpack(m, s); });
  };
  auto names = [](const std::string& msg, const std::string& tensor) {
    return msg.rfind(tensor + ":", 0) == 0;
  };
  // weight_packed: dtype, truncated words, missing.
  EXPECT_TRUE(names(with([](auto& m) { m["weight_packed"] = m["weight_packed"].to(at::kLong); }), "weight_packed"));
  EXPECT_TRUE(names(with([](auto& m) {
                      m["weight_packed"] = m["weight_packed"].narrow(1, 0, m["weight_packed"].size(1) - 1);
                    }),
                    "weight_packed"));
  EXPECT_TRUE(names(with([](auto& m) { m.erase("weight_packed"); }), "weight_packed"));
  // weight_scale: shape, dtype, non-finite.
  EXPECT_TRUE(names(with([](auto& m) { m["weight_scale"] = m["weight_scale"].t(); }), "weight_scale"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_scale"] = m["weight_scale"].to(at::kInt); }), "weight_scale"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_scale"][0][0] = INFINITY; }), "weight_scale"));
  // weight_shape: dtype, values (a different K no longer fits weight_packed).
  EXPECT_TRUE(names(with([](auto& m) { m["weight_shape"] = m["weight_shape"].to(at::kFloat); }), "weight_shape"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_shape"][1] = 80; }), "weight_packed"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_shape"][0] = 0; }), "weight_shape"));
  EXPECT_TRUE(names(with([](auto& m) { m.erase("weight_shape"); }), "weight_shape"));
  // weight_zero_point: missing for asymmetric, truncated.
  EXPECT_TRUE(names(with([](auto& m) { m.erase("weight_zero_point"); }), "weight_zero_point"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_zero_point"] = m["weight_zero_point"].narrow(1, 0, 4); }),
                    "weight_zero_point"));
  // weight_g_idx: out of range, negative, wrong group sizes, dtype, missing.
  EXPECT_TRUE(names(with([](auto& m) { m["weight_g_idx"][3] = 5; }), "weight_g_idx"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_g_idx"][3] = -1; }), "weight_g_idx"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_g_idx"].fill_(0); }), "weight_g_idx"));
  EXPECT_TRUE(names(with([](auto& m) { m["weight_g_idx"] = m["weight_g_idx"].to(at::kLong); }), "weight_g_idx"));
  EXPECT_TRUE(names(with([](auto& m) { m.erase("weight_g_idx"); }), "weight_g_idx"));

  // A symmetric, natural-order scheme refuses stray zero points and g_idx.
  ct::Scheme sym = s;
  sym.symmetric = true;
  sym.actorder = ct::ActOrder::none;
  auto m = good;
  m.erase("weight_g_idx");
  EXPECT_TRUE(names(refusal([&] { ct::unpack(m, sym); }), "weight_zero_point"));
  m = good;
  m.erase("weight_zero_point");
  EXPECT_TRUE(names(refusal([&] { ct::unpack(m, sym); }), "weight_g_idx"));
  m.erase("weight_g_idx");
  EXPECT_NO_THROW(ct::unpack(m, sym));
  m["bias"] = at::zeros({10});  // other tensors of the linear are not the codec's
  EXPECT_NO_THROW(ct::unpack(m, sym));
}

// -------------------------------------------- (f) AutoGPTQ v1 fixtures, §4.8 --
// Two checkpoints of an independent GPTQ packer (4-bit act-order, 3-bit; both
// asymmetric g32, dims not multiples of 32/b). Read as AffineLinear the v1 way
// (qweight: one LSB-first stream of codes per output column; qzeros: zero - 1,
// one stream per group), then packed: weight_packed is qweight transposed,
// word for word (3-bit included: both are dense streams), weight_scale is
// scales transposed, and the act-order g_idx is kept.
TEST(CompressedTensors, AutoGptqV1FixturesConvertByTransposition) {
  QFORGE_REQUIRE_SHARED(root, "fixtures/gptq_v1_stories260K");
  auto bits_of = [](const int32_t* words, int64_t stride, int64_t j, int b) {
    int32_t v = 0;
    for (int t = 0; t < b; ++t) {
      const int64_t s = j * b + t;
      v |= static_cast<int32_t>((static_cast<uint32_t>(words[(s / 32) * stride]) >> (s % 32)) & 1u) << t;
    }
    return v;
  };
  for (const auto& [dir, bits, act] : std::vector<std::tuple<std::string, int, bool>>{
           {"gptq-w4-g32-asym-act", 4, true}, {"gptq-w3-g32-asym-noact", 3, false}}) {
    SCOPED_TRACE(dir);
    const qforge::host::SafetensorsFile file(root + "/" + dir + "/model.safetensors");
    int linears = 0;
    for (const auto& [tensor, info] : file.tensors()) {
      const std::string suffix = ".qweight";
      if (tensor.size() < suffix.size() || tensor.compare(tensor.size() - suffix.size(), suffix.size(), suffix))
        continue;
      const std::string name = tensor.substr(0, tensor.size() - suffix.size());
      SCOPED_TRACE(name);
      const at::Tensor qweight = file.load(name + ".qweight", at::kInt);
      const at::Tensor qzeros = file.load(name + ".qzeros", at::kInt);
      const at::Tensor scales = file.load(name + ".scales", at::kHalf);
      const at::Tensor g_idx = file.load(name + ".g_idx", at::kInt);
      ct::AffineLinear l;
      l.bits = bits;
      l.in_features = g_idx.size(0);
      l.out_features = qweight.size(1);
      l.group_size = 32;
      l.symmetric = false;
      l.act_order = act;
      const int64_t n = l.out_features, k = l.in_features, groups = scales.size(0);
      l.codes = at::empty({n, k}, at::kInt);
      for (int64_t o = 0; o < n; ++o)
        for (int64_t i = 0; i < k; ++i)
          l.codes.data_ptr<int32_t>()[o * k + i] = bits_of(qweight.data_ptr<int32_t>() + o, n, i, bits);
      l.zeros = at::empty({groups, n}, at::kFloat);
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t o = 0; o < n; ++o)
          l.zeros.data_ptr<float>()[g * n + o] =
              static_cast<float>(bits_of(qzeros.data_ptr<int32_t>() + g * qzeros.size(1), 1, o, bits) + 1);
      l.scales = scales.to(at::kFloat);
      l.g_idx = g_idx;

      const ct::Scheme s = ct::scheme_of(l);
      EXPECT_EQ(s.actorder, act ? ct::ActOrder::group : ct::ActOrder::none);
      const Tensors t = ct::pack(name, l);
      const auto m = by_suffix(t, name);
      EXPECT_TRUE(at::equal(m.at("weight_packed"), qweight.t().contiguous()));
      EXPECT_TRUE(at::equal(m.at("weight_scale"), scales.t().contiguous()));
      EXPECT_EQ(m.count("weight_g_idx"), act ? 1u : 0u);
      if (act) {
        EXPECT_TRUE(at::equal(m.at("weight_g_idx"), g_idx));
      }
      const Decoded d = decode(t, name, bits, false, 32, act);
      EXPECT_TRUE(at::equal(d.zeros, l.zeros));
      EXPECT_TRUE(at::equal(d.codes, l.codes));
      expect_same(ct::unpack(m, s), l);
      ++linears;
    }
    EXPECT_EQ(linears, 5 * 7);
  }
}

// ---------------------------------------------------- (e) quantization_config --
namespace {

std::vector<std::string> llama_linears(int blocks) {
  std::vector<std::string> names;
  for (int b = 0; b < blocks; ++b)
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      names.push_back("model.layers." + std::to_string(b) + "." + n);
  return names;
}

ct::Scheme w4g128(ct::ActOrder order = ct::ActOrder::weight) {
  ct::Scheme s;
  s.num_bits = 4;
  s.symmetric = true;
  s.strategy = ct::Strategy::group;
  s.group_size = 128;
  s.actorder = order;
  return s;
}

}  // namespace

TEST(CompressedTensors, ConfigMatchesWorkedExample) {
  // §2.8, key for key: the text Python's json.dumps(config, indent=2,
  // sort_keys=True) prints for it (as compressed-tensors writes config.json).
  const std::string expected = R"({
  "config_groups": {
    "group_0": {
      "format": "pack-quantized",
      "input_activations": null,
      "output_activations": null,
      "targets": [
        "Linear"
      ],
      "weights": {
        "actorder": "static",
        "block_structure": null,
        "dynamic": false,
        "group_size": 128,
        "num_bits": 4,
        "observer": "memoryless_minmax",
        "observer_kwargs": {},
        "scale_dtype": null,
        "strategy": "group",
        "symmetric": true,
        "type": "int",
        "zp_dtype": null
      }
    }
  },
  "format": "pack-quantized",
  "global_compression_ratio": null,
  "ignore": [
    "lm_head"
  ],
  "kv_cache_scheme": null,
  "quant_method": "compressed-tensors",
  "quantization_status": "compressed",
  "sparsity_config": {},
  "transform_config": {},
  "version": "0.18.0"
})";
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(2)) layers.emplace_back(n, w4g128());
  const ordered_json q = ct::quantization_config(layers, {"lm_head"});
  EXPECT_EQ(q.dump(2), expected);
  expect_sorted(q);
  for (const auto& [name, s] : layers) EXPECT_EQ(ct::parse_scheme(json::parse(q.dump()), name), s);
  EXPECT_EQ(ct::parse_scheme(json::parse(q.dump()), "lm_head"), std::nullopt);

  // Without act-order: actorder null; asymmetric: zp_dtype torch.int8; channel: group_size null.
  ct::Scheme asym_channel;
  asym_channel.num_bits = 8;
  asym_channel.symmetric = false;
  asym_channel.strategy = ct::Strategy::channel;
  asym_channel.group_size = -1;
  const ordered_json c = ct::quantization_config({{"a.q_proj", asym_channel}}, {});
  const auto& w = c["config_groups"]["group_0"]["weights"];
  EXPECT_TRUE(w["actorder"].is_null());
  EXPECT_TRUE(w["group_size"].is_null());
  EXPECT_EQ(w["strategy"], "channel");
  EXPECT_EQ(w["zp_dtype"], "torch.int8");
  EXPECT_EQ(w["symmetric"], false);
  EXPECT_EQ(ct::parse_scheme(json::parse(c.dump()), "a.q_proj"), asym_channel);
}

TEST(CompressedTensors, ConfigTwoSchemesDownProjOverride) {
  ct::Scheme w8 = w4g128();
  w8.num_bits = 8;
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(3))
    layers.emplace_back(n, n.find("down_proj") != std::string::npos ? w8 : w4g128());
  const ordered_json q = ct::quantization_config(layers, {"lm_head"});
  expect_sorted(q);
  ASSERT_EQ(q["config_groups"].size(), 2u);
  EXPECT_EQ(q["format"], "pack-quantized");
  EXPECT_EQ(q["config_groups"]["group_0"]["targets"],
            ordered_json::parse(R"(["re:.*\\.self_attn\\.q_proj$", "re:.*\\.self_attn\\.k_proj$",
              "re:.*\\.self_attn\\.v_proj$", "re:.*\\.self_attn\\.o_proj$", "re:.*\\.mlp\\.gate_proj$",
              "re:.*\\.mlp\\.up_proj$"])"));
  EXPECT_EQ(q["config_groups"]["group_1"]["targets"], ordered_json::parse(R"(["re:.*\\.mlp\\.down_proj$"])"));
  EXPECT_EQ(q["config_groups"]["group_1"]["weights"]["num_bits"], 8);
  const json parsed = json::parse(q.dump());
  for (const auto& [name, s] : layers) EXPECT_EQ(ct::parse_scheme(parsed, name), s) << name;
  EXPECT_EQ(ct::parse_scheme(parsed, "lm_head"), std::nullopt);

  // One block's down_proj only: exact names where a suffix regex would catch others.
  layers.clear();
  for (const auto& n : llama_linears(3))
    layers.emplace_back(n, n == "model.layers.1.mlp.down_proj" ? w8 : w4g128());
  const ordered_json one = ct::quantization_config(layers, {"lm_head"});
  EXPECT_EQ(one["config_groups"]["group_1"]["targets"], ordered_json::parse(R"(["model.layers.1.mlp.down_proj"])"));
  const auto& t0 = one["config_groups"]["group_0"]["targets"];
  EXPECT_NE(std::find(t0.begin(), t0.end(), "model.layers.0.mlp.down_proj"), t0.end());
  EXPECT_EQ(std::find(t0.begin(), t0.end(), "model.layers.1.mlp.down_proj"), t0.end());
  const json p1 = json::parse(one.dump());
  for (const auto& [name, s] : layers) EXPECT_EQ(ct::parse_scheme(p1, name), s) << name;
}

TEST(CompressedTensors, ConfigRefusesFusedShardMismatch) {
  ct::Scheme w8 = w4g128();
  w8.num_bits = 8;
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(2))
    layers.emplace_back(n, n == "model.layers.1.self_attn.k_proj" ? w8 : w4g128());
  const std::string m = refusal([&] { ct::quantization_config(layers, {}); });
  EXPECT_NE(m.find("model.layers.1.self_attn.k_proj"), std::string::npos) << m;
  EXPECT_NE(m.find("vLLM"), std::string::npos) << m;

  // gate_proj ignored while up_proj is quantized.
  layers.clear();
  for (const auto& n : llama_linears(2))
    if (n != "model.layers.0.mlp.gate_proj") layers.emplace_back(n, w4g128());
  const std::string g = refusal([&] { ct::quantization_config(layers, {"model.layers.0.mlp.gate_proj"}); });
  EXPECT_NE(g.find("model.layers.0.mlp.up_proj"), std::string::npos) << g;
  EXPECT_NE(g.find("ignored"), std::string::npos) << g;
  // ... and via a regex.
  EXPECT_FALSE(refusal([&] { ct::quantization_config(layers, {"re:.*gate_proj"}); }).empty());
  // A layer both quantized and ignored; a duplicate.
  EXPECT_FALSE(refusal([&] { ct::quantization_config(layers, {layers[0].first}); }).empty());
  layers.push_back(layers[0]);
  EXPECT_FALSE(refusal([&] { ct::quantization_config(layers, {}); }).empty());
}

TEST(CompressedTensors, ParseSchemeMatchingAndRefusals) {
  std::vector<std::pair<std::string, ct::Scheme>> layers = {{"model.layers.0.mlp.down_proj", w4g128()}};
  const json base = json::parse(ct::quantization_config(layers, {"lm_head"}).dump());
  const std::string lin = "model.layers.0.mlp.down_proj";

  // An exact name beats the class name; regexes are anchored at the start.
  json q = base;
  q["config_groups"]["group_1"] = q["config_groups"]["group_0"];
  q["config_groups"]["group_1"]["targets"] = {lin};
  q["config_groups"]["group_1"]["weights"]["num_bits"] = 8;
  EXPECT_EQ(ct::parse_scheme(q, lin)->num_bits, 8);
  EXPECT_EQ(ct::parse_scheme(q, "model.layers.1.mlp.down_proj")->num_bits, 4);
  q["config_groups"]["group_1"]["targets"] = {"re:mlp\\.down_proj"};  // not at the start
  EXPECT_EQ(ct::parse_scheme(q, lin)->num_bits, 4);
  q["config_groups"]["group_1"]["targets"] = {"re:model\\.layers\\.\\d+\\.mlp"};
  EXPECT_EQ(ct::parse_scheme(q, lin)->num_bits, 8);
  q["config_groups"]["group_1"]["targets"] = {"Linear"};  // two groups at the same level
  EXPECT_NE(refusal([&] { ct::parse_scheme(q, lin); }).find("two config groups"), std::string::npos);
  q["config_groups"]["group_1"]["targets"] = {"re:(unclosed"};
  EXPECT_NE(refusal([&] { ct::parse_scheme(q, lin); }).find("bad regex"), std::string::npos);

  // Not targeted / ignored by regex: a dense linear.
  q = base;
  q["config_groups"]["group_0"]["targets"] = {"re:.*q_proj$"};
  EXPECT_EQ(ct::parse_scheme(q, lin), std::nullopt);
  q = base;
  q["ignore"] = {"re:.*down_proj"};
  EXPECT_EQ(ct::parse_scheme(q, lin), std::nullopt);

  // Legacy spellings: actorder true / "group" / "weight", strategy inferred from group_size.
  q = base;
  q["config_groups"]["group_0"]["weights"]["actorder"] = true;
  EXPECT_EQ(ct::parse_scheme(q, lin)->actorder, ct::ActOrder::group);
  q["config_groups"]["group_0"]["weights"]["actorder"] = "weight";
  EXPECT_EQ(ct::parse_scheme(q, lin)->actorder, ct::ActOrder::weight);
  q["config_groups"]["group_0"]["weights"].erase("strategy");
  EXPECT_EQ(ct::parse_scheme(q, lin)->strategy, ct::Strategy::group);
  q["config_groups"]["group_0"]["weights"]["group_size"] = -1;
  q["config_groups"]["group_0"]["weights"]["actorder"] = nullptr;
  EXPECT_EQ(ct::parse_scheme(q, lin)->strategy, ct::Strategy::channel);

  // Refusals, each naming its key.
  auto refused = [&](const std::function<void(json&)>& edit, const std::string& key) {
    json c = base;
    edit(c);
    const std::string m = refusal([&] { ct::parse_scheme(c, lin); });
    EXPECT_NE(m.find(key), std::string::npos) << m;
  };
  auto w = [](json& c) -> json& { return c["config_groups"]["group_0"]["weights"]; };
  refused([](json& c) { c["quant_method"] = "gptq"; }, "quant_method");
  refused([](json& c) { c["config_groups"]["group_0"]["format"] = "marlin-24"; }, "group_0.format");
  refused([](json& c) { c["config_groups"]["group_0"].erase("format"); c["format"] = "mixed-precision"; },
          "quantization_config.format");
  // Unpacked formats hold 8-bit channel/tensor weights, not W4 g128.
  refused([](json& c) { c["config_groups"]["group_0"]["format"] = "int-quantized"; }, "weights.num_bits");
  refused([](json& c) { c["config_groups"]["group_0"]["input_activations"] = {{"num_bits", 8}}; },
          "input_activations");
  refused([](json& c) { c["config_groups"]["group_0"]["output_activations"] = {{"num_bits", 8}}; },
          "output_activations");
  refused([&](json& c) { w(c)["type"] = "float"; }, "weights.type");
  refused([&](json& c) { w(c)["strategy"] = "tensor"; }, "weights.strategy");
  refused([&](json& c) { w(c)["strategy"] = "block"; }, "weights.strategy");
  refused([&](json& c) { w(c)["dynamic"] = true; }, "weights.dynamic");
  refused([&](json& c) { w(c)["num_bits"] = 16; }, "weights.num_bits");
  refused([&](json& c) { w(c)["actorder"] = "sideways"; }, "weights.actorder");
  refused([&](json& c) { w(c)["block_structure"] = {128, 128}; }, "weights.block_structure");
  refused([&](json& c) { w(c) = nullptr; }, "weights");
  refused([](json& c) { c["quantization_status"] = "frozen"; }, "quantization_status");
  refused([](json& c) { c["transform_config"] = {{"config_groups", json::object()}}; }, "transform_config");
  refused([](json& c) { c["sparsity_config"] = {{"format", "sparse-24-bitmask"}}; }, "sparsity_config");
  refused([](json& c) { c["config_groups"]["group_0"] = json::array({"Linear"}); }, "group_0");
  // 3-bit: the packing changed in compressed-tensors 0.17.
  refused([&](json& c) { w(c)["num_bits"] = 3; c["version"] = "0.16.0"; }, "version");
  refused([&](json& c) { w(c)["num_bits"] = 3; c.erase("version"); }, "version");
  json ok = base;
  w(ok)["num_bits"] = 3;
  ok["version"] = "0.17.1.dev4";
  EXPECT_EQ(ct::parse_scheme(ok, lin)->num_bits, 3);
  ok.erase("version");
  w(ok)["num_bits"] = 8;  // 2/4/8 bits are the same bytes in every version
  EXPECT_EQ(ct::parse_scheme(ok, lin)->num_bits, 8);
}

TEST(CompressedTensors, HeaderNamesMatchCodec) {
  EXPECT_STREQ(QFORGE_FORMAT_CT_PACK_QUANTIZED_V1, "org.qforge.ct-pack-quantized/1");
  const ct::AffineLinear l = make_linear(4, 3, 20, 8, false, Order::shuffled, 9);
  const Tensors t = ct::pack("p", l);
  std::vector<std::string> names;
  for (const auto& [n, v] : t) names.push_back(n);
  EXPECT_EQ(names, (std::vector<std::string>{"p." QFORGE_CT_WEIGHT_PACKED, "p." QFORGE_CT_WEIGHT_SCALE,
                                             "p." QFORGE_CT_WEIGHT_SHAPE, "p." QFORGE_CT_WEIGHT_ZERO_POINT,
                                             "p." QFORGE_CT_WEIGHT_G_IDX}));
}

// =========================================== int-/float-/naive-quantized layout --
// <qforge/formats/ct_naive_quantized_v1.h>: W8A8 (int-quantized), FP8 and
// FP8_DYNAMIC (float-quantized), FP8 weight-only (naive-quantized).
namespace {

using qforge::test::ct_decoder::decode_naive;
using qforge::test::ct_decoder::e4m3;
using Type = ct::Type;
using Strategy = ct::Strategy;

// A naive-layout scheme as qforge writes it (the format per §4.1).
ct::Scheme naive_scheme(Type type, Strategy weights, std::optional<Strategy> input) {
  ct::Scheme s;
  s.type = type;
  s.num_bits = 8;
  s.strategy = weights;
  s.group_size = -1;
  if (input) s.input = ct::InputArgs{type, *input};
  s.format = type == Type::integer ? ct::Format::int_quantized
             : input               ? ct::Format::float_quantized
                                   : ct::Format::naive_quantized;
  return s;
}

// The E4M3 number with these fields, built from them (not by the decoder):
// (8 + m) * 2^(e - 10) for e > 0, m * 2^-9 for e = 0.
float e4m3_of_fields(int sign, int e, int m) {
  const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
  return sign ? -v : v;
}

// A QuantResult of the naive format as a W8A8 / FP8 quantizer returns it
// (metadata, tensors, dequantized = s·q in float32): random codes (every
// finite E4M3 byte possible), float16-exact positive scales.
struct NaiveResult {
  std::string metadata;
  std::map<std::string, at::Tensor> tensors;
  at::Tensor dequantized;
};

NaiveResult make_naive(const ct::Scheme& s, int64_t n, int64_t k, uint32_t seed) {
  std::mt19937 rng(seed);
  const bool fp = s.type == Type::floating;
  NaiveResult r;
  at::Tensor q = at::empty({n, k}, at::kFloat);  // the code's value
  at::Tensor w = at::empty({n, k}, fp ? at::kByte : at::kChar);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t i = 0; i < n * k; ++i) {
    if (fp) {
      int b = byte(rng);
      if ((b & 0x7F) == 0x7F) b ^= 1;  // no NaN
      w.data_ptr<uint8_t>()[i] = static_cast<uint8_t>(b);
      q.data_ptr<float>()[i] = e4m3_of_fields(b >> 7, (b >> 3) & 0xF, b & 7);
    } else {
      const int v = byte(rng) - 128;
      w.data_ptr<int8_t>()[i] = static_cast<int8_t>(v);
      q.data_ptr<float>()[i] = static_cast<float>(v);
    }
  }
  std::uniform_real_distribution<float> scale(1e-4f, 5e-2f);
  at::Tensor ws = at::empty(s.strategy == Strategy::channel ? std::vector<int64_t>{n, 1} : std::vector<int64_t>{1});
  for (int64_t i = 0; i < ws.numel(); ++i) ws.data_ptr<float>()[i] = scale(rng);
  ws = ws.to(at::kHalf).to(at::kFloat);
  r.tensors = {{"weight", w}, {"weight_scale", ws}};
  if (s.input && s.input->strategy == Strategy::tensor)
    r.tensors["input_scale"] = at::full({1}, 0.021484375f);  // a float16 number
  r.dequantized = ws * q;
  json input = nullptr;
  if (s.input)
    input = {{"num_bits", 8}, {"type", fp ? "float" : "int"}, {"symmetric", true},
             {"strategy", s.input->strategy == Strategy::token ? "token" : "tensor"},
             {"dynamic", s.input->strategy == Strategy::token}};
  r.metadata = json{{"weights", {{"num_bits", 8}, {"type", fp ? "float" : "int"}, {"symmetric", true},
                                 {"strategy", s.strategy == Strategy::channel ? "channel" : "tensor"}}},
                    {"input_activations", input},
                    {"in_features", k},
                    {"out_features", n}}
                   .dump();
  return r;
}

struct NaiveCase {
  const char* name;
  Type type;
  Strategy weights;
  std::optional<Strategy> input;
  const char* format;
};

const NaiveCase kNaiveCases[] = {
    {"W8A8", Type::integer, Strategy::channel, Strategy::token, "int-quantized"},
    {"W8A8_static", Type::integer, Strategy::tensor, Strategy::tensor, "int-quantized"},
    {"FP8", Type::floating, Strategy::tensor, Strategy::tensor, "float-quantized"},
    {"FP8_DYNAMIC", Type::floating, Strategy::channel, Strategy::token, "float-quantized"},
    {"FP8_weight_only", Type::floating, Strategy::channel, std::nullopt, "naive-quantized"},
    {"FP8_weight_only_tensor", Type::floating, Strategy::tensor, std::nullopt, "naive-quantized"},
};

std::map<std::string, at::Tensor> views_by_suffix(const qforge::host::SafetensorsFile& f,
                                                  const std::string& prefix) {
  std::map<std::string, at::Tensor> m;
  for (const auto& [name, info] : f.tensors()) m[name.substr(prefix.size() + 1)] = f.view(name);
  return m;
}

}  // namespace

TEST(CompressedTensorsNaive, HeaderNames) {
  EXPECT_STREQ(QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1, "org.qforge.ct-naive-quantized/1");
  EXPECT_STREQ(ct::format_name(ct::Format::int_quantized), QFORGE_CT_FORMAT_INT_QUANTIZED);
  EXPECT_STREQ(ct::format_name(ct::Format::float_quantized), QFORGE_CT_FORMAT_FLOAT_QUANTIZED);
  EXPECT_STREQ(ct::format_name(ct::Format::naive_quantized), QFORGE_CT_FORMAT_NAIVE_QUANTIZED);
}

// The decoder against E4M3FN values known by heart.
TEST(CompressedTensorsNaive, DecoderKnownE4M3Values) {
  EXPECT_EQ(e4m3(0x38), 1.0f);
  EXPECT_EQ(e4m3(0xB8), -1.0f);
  EXPECT_EQ(e4m3(0x7E), 448.0f);
  EXPECT_EQ(e4m3(0xFE), -448.0f);
  EXPECT_EQ(e4m3(0x08), 0.015625f);       // 2^-6, the smallest normal
  EXPECT_EQ(e4m3(0x07), 0.013671875f);    // 7/8 * 2^-6, the largest subnormal
  EXPECT_EQ(e4m3(0x01), 0.001953125f);    // 2^-9
  EXPECT_EQ(e4m3(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(e4m3(0x80)));
  EXPECT_EQ(e4m3(0x3D), 1.625f);
  EXPECT_TRUE(std::isnan(e4m3(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3(0xFF)));
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7F) == 0x7F) continue;
    EXPECT_EQ(e4m3(static_cast<uint8_t>(b)), e4m3_of_fields(b >> 7, (b >> 3) & 0xF, b & 7)) << b;
  }
}

class NaiveLayout : public ::testing::TestWithParam<NaiveCase> {};

// A QuantResult -> the tensors of a safetensors file (dtypes and shapes as in
// the header) -> the independent decoder (the result's dequantized weight
// exactly) and the reader (the same codes, scales and metadata).
TEST_P(NaiveLayout, WriteDecodeRead) {
  const NaiveCase& c = GetParam();
  const ct::Scheme scheme = naive_scheme(c.type, c.weights, c.input);
  const bool fp = c.type == Type::floating;
  const bool static_input = c.input == Strategy::tensor;
  const int64_t n = 24, k = 40;
  const NaiveResult r = make_naive(scheme, n, k, 11);
  const ct::NaiveLinear l = ct::naive_linear(r.metadata, r.tensors);
  EXPECT_EQ(l.scheme, scheme);
  EXPECT_STREQ(ct::format_name(l.scheme.format), c.format);
  EXPECT_EQ(ct::naive_metadata(l), json::parse(r.metadata));

  const std::string prefix = "model.layers.0.self_attn.o_proj";
  const Tensors t = ct::pack(prefix, l);
  std::vector<std::string> names;
  for (const auto& [name, v] : t) names.push_back(name.substr(prefix.size() + 1));
  std::vector<std::string> want_names = {"weight", "weight_scale"};
  if (static_input) want_names.push_back("input_scale");
  EXPECT_EQ(names, want_names);

  const std::string path = qforge::test::temp_path("qforge_ct_naive", c.name) + ".safetensors";
  qforge::host::save_safetensors(path, t);
  {
    const qforge::host::SafetensorsFile f(path);
    using qforge::host::StDtype;
    EXPECT_EQ(f.info(prefix + ".weight").dtype, fp ? StDtype::F8_E4M3 : StDtype::I8);
    EXPECT_EQ(f.info(prefix + ".weight").shape, (std::vector<int64_t>{n, k}));
    EXPECT_EQ(f.info(prefix + ".weight_scale").dtype, StDtype::F16);
    const std::vector<int64_t> scale_shape =
        c.weights == Strategy::channel ? std::vector<int64_t>{n, 1} : std::vector<int64_t>{1};
    EXPECT_EQ(f.info(prefix + ".weight_scale").shape, scale_shape);
    if (static_input) {
      EXPECT_EQ(f.info(prefix + ".input_scale").dtype, StDtype::F16);
      EXPECT_EQ(f.info(prefix + ".input_scale").shape, std::vector<int64_t>{1});
    }

    Tensors stored;
    for (const auto& [name, info] : f.tensors()) stored.emplace_back(name, f.view(name));
    EXPECT_TRUE(at::equal(decode_naive(stored, prefix, fp), r.dequantized));

    const ct::NaiveLinear u = ct::unpack_naive(views_by_suffix(f, prefix), scheme);
    EXPECT_EQ(u.scheme, scheme);
    EXPECT_TRUE(at::equal(u.weight, r.tensors.at("weight")));
    EXPECT_TRUE(at::equal(u.weight_scale, r.tensors.at("weight_scale")));
    EXPECT_EQ(u.weight_scale.scalar_type(), at::kFloat);
    EXPECT_EQ(u.input_scale.defined(), static_input);
    if (static_input) {
      EXPECT_TRUE(at::equal(u.input_scale, r.tensors.at("input_scale")));
    }
    EXPECT_EQ(ct::naive_metadata(u), json::parse(r.metadata));
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(Schemes, NaiveLayout, ::testing::ValuesIn(kNaiveCases),
                         [](const ::testing::TestParamInfo<NaiveCase>& i) { return std::string(i.param.name); });

// The metadata of the format's header, written out by hand.
TEST(CompressedTensorsNaive, MetadataAsTheHeaderWritesIt) {
  const NaiveResult r = make_naive(naive_scheme(Type::integer, Strategy::channel, Strategy::token), 3, 5, 1);
  const json want = json::parse(R"({
    "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"},
    "input_activations": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token",
                          "dynamic": true},
    "in_features": 5, "out_features": 3})");
  EXPECT_EQ(json::parse(r.metadata), want);
  EXPECT_EQ(ct::naive_metadata(ct::naive_linear(want.dump(), r.tensors)), want);
}

// int weights alone are what compressed-tensors stores as pack-quantized
// (W8A16): to_affine gives W8 channel sym, whose pack-quantized tensors the
// pack decoder reads as the same weights.
TEST(CompressedTensorsNaive, IntWeightsAloneArePackQuantized) {
  for (Strategy st : {Strategy::channel, Strategy::tensor}) {
    const ct::Scheme scheme = naive_scheme(Type::integer, st, std::nullopt);
    const NaiveResult r = make_naive(scheme, 9, 70, 5);
    const ct::NaiveLinear l = ct::naive_linear(r.metadata, r.tensors);
    EXPECT_EQ(l.scheme.format, ct::Format::int_quantized);
    const ct::AffineLinear a = ct::to_affine(l);
    const ct::Scheme s = ct::scheme_of(a);
    EXPECT_EQ(s.format, ct::Format::pack_quantized);
    EXPECT_EQ(s.num_bits, 8);
    EXPECT_EQ(s.strategy, Strategy::channel);
    EXPECT_TRUE(s.symmetric);
    const Decoded d = decode(ct::pack("p", a), "p", 8, true, -1, false);
    EXPECT_TRUE(at::equal(qforge::test::ct_decoder::weight(d), r.dequantized));
  }
  const NaiveResult fp8 = make_naive(naive_scheme(Type::floating, Strategy::channel, std::nullopt), 2, 3, 5);
  EXPECT_NE(refusal([&] { ct::to_affine(ct::naive_linear(fp8.metadata, fp8.tensors)); }).find("int weights alone"),
            std::string::npos);
}

// A result that breaks the header is refused, naming the key or tensor.
TEST(CompressedTensorsNaive, ResultRefusals) {
  const ct::Scheme fp8 = naive_scheme(Type::floating, Strategy::tensor, Strategy::tensor);
  const NaiveResult good = make_naive(fp8, 4, 6, 3);
  ASSERT_NO_THROW(ct::naive_linear(good.metadata, good.tensors));
  auto meta = [&](const std::function<void(json&)>& edit, const std::string& key) {
    json m = json::parse(good.metadata);
    edit(m);
    const std::string msg = refusal([&] { ct::naive_linear(m.dump(), good.tensors); });
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
  };
  meta([](json& m) { m["weights"]["num_bits"] = 4; }, "metadata.weights.num_bits");
  meta([](json& m) { m["weights"]["symmetric"] = false; }, "metadata.weights.symmetric");
  meta([](json& m) { m["weights"]["strategy"] = "group"; }, "metadata.weights.strategy");
  meta([](json& m) { m["weights"]["type"] = "fp8"; }, "metadata.weights.type");
  meta([](json& m) { m["weights"] = nullptr; }, "metadata.weights");
  meta([](json& m) { m["input_activations"]["type"] = "int"; }, "metadata.input_activations.type");
  meta([](json& m) { m["input_activations"]["dynamic"] = true; }, "metadata.input_activations.dynamic");
  meta([](json& m) { m["input_activations"]["strategy"] = "token"; m["input_activations"]["dynamic"] = false; },
       "metadata.input_activations.dynamic");
  meta([](json& m) { m["input_activations"]["strategy"] = "group"; }, "metadata.input_activations.strategy");
  meta([](json& m) { m["input_activations"]["symmetric"] = false; }, "metadata.input_activations.symmetric");
  meta([](json& m) { m["in_features"] = 7; }, "in_features");
  meta([](json& m) { m["in_features"] = 0; }, "metadata.in_features");
  meta([](json& m) { m.erase("out_features"); }, "metadata.out_features");
  meta([](json& m) { m = json::array(); }, "metadata");
  // Dynamic inputs: no input_scale.
  meta([](json& m) { m["input_activations"]["strategy"] = "token"; m["input_activations"]["dynamic"] = true; },
       "input_scale");

  auto tensors = [&](const std::function<void(std::map<std::string, at::Tensor>&)>& edit, const std::string& name) {
    auto t = good.tensors;
    for (auto& [k, v] : t) v = v.clone();
    edit(t);
    const std::string msg = refusal([&] { ct::naive_linear(good.metadata, t); });
    EXPECT_EQ(msg.rfind(name + ":", 0), 0u) << msg;
  };
  tensors([](auto& t) { t["weight"] = t["weight"].to(at::kChar); }, "weight");
  tensors([](auto& t) { t["weight"] = t["weight"].narrow(1, 0, 5); }, "weight");
  tensors([](auto& t) { t["weight"][1][2] = 0x7F; }, "weight");  // NaN
  tensors([](auto& t) { t["weight"][0][0] = 0xFF; }, "weight");  // -NaN
  tensors([](auto& t) { t.erase("weight"); }, "weight");
  tensors([](auto& t) { t["weight_scale"] = t["weight_scale"].to(at::kHalf); }, "weight_scale");
  tensors([](auto& t) { t["weight_scale"] = at::full({4, 1}, 0.5f); }, "weight_scale");
  tensors([](auto& t) { t["weight_scale"].fill_(-0.5f); }, "weight_scale");
  tensors([](auto& t) { t["weight_scale"].fill_(0.0f); }, "weight_scale");
  tensors([](auto& t) { t["weight_scale"].fill_(NAN); }, "weight_scale");
  tensors([](auto& t) { t["weight_scale"].fill_(INFINITY); }, "weight_scale");
  tensors([](auto& t) { t.erase("input_scale"); }, "input_scale");
  tensors([](auto& t) { t["input_scale"].fill_(-1.0f); }, "input_scale");
  tensors([](auto& t) { t["input_scale"] = at::full({1, 1}, 0.5f); }, "input_scale");

  // Scales the file cannot hold exactly (float16) are refused when written.
  auto t = good.tensors;
  t["weight_scale"] = at::full({1}, 0.1f);
  EXPECT_NE(refusal([&] { ct::pack("p", ct::naive_linear(good.metadata, t)); }).find("float16"), std::string::npos);
  t = good.tensors;
  t["input_scale"] = at::full({1}, 1e-9f);
  EXPECT_NE(refusal([&] { ct::pack("p", ct::naive_linear(good.metadata, t)); }).find("input_scale"),
            std::string::npos);
}

// Checkpoint tensors: liberal about scale dtypes and shapes as vLLM is,
// strict about the rest.
TEST(CompressedTensorsNaive, UnpackRefusesMalformedTensors) {
  const ct::Scheme fp8 = naive_scheme(Type::floating, Strategy::tensor, Strategy::tensor);
  const NaiveResult r = make_naive(fp8, 5, 8, 4);
  const auto packed = by_suffix(ct::pack("m", ct::naive_linear(r.metadata, r.tensors)), "m");
  ASSERT_TRUE(qforge::host::is_f8_e4m3(packed.at("weight")));
  ASSERT_NO_THROW(ct::unpack_naive(packed, fp8));
  auto with = [&](const ct::Scheme& s, const std::function<void(std::map<std::string, at::Tensor>&)>& edit) {
    auto m = packed;
    edit(m);
    return refusal([&] { ct::unpack_naive(m, s); });
  };
  auto names = [](const std::string& msg, const std::string& tensor) { return msg.rfind(tensor + ":", 0) == 0; };
  // weight: plain U8 (not F8_E4M3), I8, F16, 1-D, NaN code, missing.
  const std::string u8 = with(fp8, [](auto& m) { m["weight"] = m["weight"].clone(); });
  EXPECT_TRUE(names(u8, "weight"));
  EXPECT_NE(u8.find("expected F8_E4M3"), std::string::npos) << u8;
  EXPECT_NE(u8.find("got U8"), std::string::npos) << u8;
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight"] = m["weight"].to(at::kChar); }), "weight"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight"] = m["weight"].to(at::kHalf); }), "weight"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight"] = qforge::host::as_f8_e4m3(m["weight"].reshape({-1})); }),
                    "weight"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) {
                      at::Tensor w = m["weight"].clone();
                      w[0][0] = 0x7F;
                      m["weight"] = qforge::host::as_f8_e4m3(w);
                    }),
                    "weight"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m.erase("weight"); }), "weight"));
  // weight_scale: dtype, shape, values, missing.
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_scale"] = m["weight_scale"].to(at::kInt); }), "weight_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_scale"] = at::full({5, 1}, 0.5f); }), "weight_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_scale"] = at::full({1}, -0.5f, at::kHalf); }), "weight_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_scale"] = at::full({1}, NAN, at::kHalf); }), "weight_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m.erase("weight_scale"); }), "weight_scale"));
  // input_scale: missing (static), shape, value; stray zero points and g_idx.
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m.erase("input_scale"); }), "input_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["input_scale"] = at::full({2}, 0.5f); }), "input_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["input_scale"] = at::full({1}, 0.0f); }), "input_scale"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_zero_point"] = at::zeros({1}, at::kChar); }),
                    "weight_zero_point"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["input_zero_point"] = at::zeros({1}, at::kChar); }),
                    "input_zero_point"));
  EXPECT_TRUE(names(with(fp8, [](auto& m) { m["weight_g_idx"] = at::zeros({8}, at::kInt); }), "weight_g_idx"));
  // Dynamic inputs: a stray input_scale.
  const ct::Scheme dyn = naive_scheme(Type::floating, Strategy::tensor, Strategy::token);
  EXPECT_TRUE(names(with(dyn, [](auto&) {}), "input_scale"));
  // int weights want I8, not F8_E4M3.
  const ct::Scheme w8a8 = naive_scheme(Type::integer, Strategy::tensor, Strategy::tensor);
  const std::string i8 = with(w8a8, [](auto&) {});
  EXPECT_TRUE(names(i8, "weight"));
  EXPECT_NE(i8.find("expected I8"), std::string::npos) << i8;
  // A pack-quantized scheme is not this layout.
  EXPECT_FALSE(with(w4g128(), [](auto&) {}).empty());

  // Liberal: bfloat16 / float32 scales, [] for a tensor scale, [N] for channel.
  auto m = packed;
  m["weight_scale"] = m["weight_scale"].to(at::kBFloat16).reshape({});
  m["input_scale"] = m["input_scale"].to(at::kFloat).reshape({});
  const ct::NaiveLinear u = ct::unpack_naive(m, fp8);
  EXPECT_EQ(u.weight_scale.sizes(), at::IntArrayRef({1}));
  EXPECT_EQ(u.input_scale.sizes(), at::IntArrayRef({1}));
  const ct::Scheme channel = naive_scheme(Type::floating, Strategy::channel, Strategy::tensor);
  m = packed;
  m["weight_scale"] = at::full({5}, 0.25f, at::kHalf);
  const ct::NaiveLinear v = ct::unpack_naive(m, channel);
  EXPECT_EQ(v.weight_scale.sizes(), at::IntArrayRef({5, 1}));
  EXPECT_TRUE(at::equal(v.weight_scale, at::full({5, 1}, 0.25f)));
}

// quantization_config for the presets of §2.8 / §6.3, written out by hand in
// the shape of §2.8 (json.dumps(indent=2, sort_keys=True)).
namespace {

// One QuantizationArgs as compressed-tensors writes it.
std::string args_text(const std::string& indent, bool dynamic, const std::string& observer,
                      const std::string& strategy, const std::string& type) {
  return "{\n" + indent + "  \"actorder\": null,\n" + indent + "  \"block_structure\": null,\n" + indent +
         "  \"dynamic\": " + (dynamic ? "true" : "false") + ",\n" + indent + "  \"group_size\": null,\n" + indent +
         "  \"num_bits\": 8,\n" + indent + "  \"observer\": " + observer + ",\n" + indent +
         "  \"observer_kwargs\": {},\n" + indent + "  \"scale_dtype\": null,\n" + indent + "  \"strategy\": \"" +
         strategy + "\",\n" + indent + "  \"symmetric\": true,\n" + indent + "  \"type\": \"" + type + "\",\n" +
         indent + "  \"zp_dtype\": null\n" + indent + "}";
}

}  // namespace

TEST(CompressedTensorsNaive, ConfigW8A8MatchesHandWritten) {
  // §2.8's last paragraph: the W8A8-INT8 preset, int-quantized.
  const std::string expected = R"({
  "config_groups": {
    "group_0": {
      "format": "int-quantized",
      "input_activations": {
        "actorder": null,
        "block_structure": null,
        "dynamic": true,
        "group_size": null,
        "num_bits": 8,
        "observer": null,
        "observer_kwargs": {},
        "scale_dtype": null,
        "strategy": "token",
        "symmetric": true,
        "type": "int",
        "zp_dtype": null
      },
      "output_activations": null,
      "targets": [
        "Linear"
      ],
      "weights": {
        "actorder": null,
        "block_structure": null,
        "dynamic": false,
        "group_size": null,
        "num_bits": 8,
        "observer": "memoryless_minmax",
        "observer_kwargs": {},
        "scale_dtype": null,
        "strategy": "channel",
        "symmetric": true,
        "type": "int",
        "zp_dtype": null
      }
    }
  },
  "format": "int-quantized",
  "global_compression_ratio": null,
  "ignore": [
    "lm_head"
  ],
  "kv_cache_scheme": null,
  "quant_method": "compressed-tensors",
  "quantization_status": "compressed",
  "sparsity_config": {},
  "transform_config": {},
  "version": "0.18.0"
})";
  const ct::Scheme w8a8 = naive_scheme(Type::integer, Strategy::channel, Strategy::token);
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(2)) layers.emplace_back(n, w8a8);
  const ordered_json q = ct::quantization_config(layers, {"lm_head"});
  EXPECT_EQ(q.dump(2), expected);
  expect_sorted(q);
  const json parsed = json::parse(q.dump());
  for (const auto& [name, s] : layers) EXPECT_EQ(ct::parse_scheme(parsed, name), s) << name;
  EXPECT_EQ(ct::group_schemes(parsed), std::vector<ct::Scheme>{w8a8});
}

TEST(CompressedTensorsNaive, ConfigFp8PresetsMatchHandWritten) {
  // §6.3: FP8 = float tensor weights, static tensor inputs observed by
  // static_minmax; FP8_DYNAMIC = float channel weights, dynamic token inputs;
  // FP8 weight-only: naive-quantized.
  const std::string w = "      ", tail = R"(,
  "global_compression_ratio": null,
  "ignore": [
    "lm_head"
  ],
  "kv_cache_scheme": null,
  "quant_method": "compressed-tensors",
  "quantization_status": "compressed",
  "sparsity_config": {},
  "transform_config": {},
  "version": "0.18.0"
})";
  auto config = [&](const std::string& format, const std::string& input, const std::string& weights) {
    return "{\n  \"config_groups\": {\n    \"group_0\": {\n      \"format\": \"" + format +
           "\",\n      \"input_activations\": " + input +
           ",\n      \"output_activations\": null,\n      \"targets\": [\n        \"Linear\"\n      ],\n"
           "      \"weights\": " + weights + "\n    }\n  },\n  \"format\": \"" + format + "\"" + tail;
  };
  const std::string memoryless = "\"memoryless_minmax\"";
  const std::vector<std::tuple<std::string, ct::Scheme, std::string>> presets = {
      {"FP8", naive_scheme(Type::floating, Strategy::tensor, Strategy::tensor),
       config("float-quantized", args_text(w, false, "\"static_minmax\"", "tensor", "float"),
              args_text(w, false, memoryless, "tensor", "float"))},
      {"FP8_DYNAMIC", naive_scheme(Type::floating, Strategy::channel, Strategy::token),
       config("float-quantized", args_text(w, true, "null", "token", "float"),
              args_text(w, false, memoryless, "channel", "float"))},
      {"FP8 weight-only", naive_scheme(Type::floating, Strategy::channel, std::nullopt),
       config("naive-quantized", "null", args_text(w, false, memoryless, "channel", "float"))},
  };
  for (const auto& [name, scheme, expected] : presets) {
    SCOPED_TRACE(name);
    std::vector<std::pair<std::string, ct::Scheme>> layers;
    for (const auto& n : llama_linears(1)) layers.emplace_back(n, scheme);
    const ordered_json q = ct::quantization_config(layers, {"lm_head"});
    EXPECT_EQ(q.dump(2), expected);
    expect_sorted(q);
    for (const auto& [n, s] : layers) EXPECT_EQ(ct::parse_scheme(json::parse(q.dump()), n), s) << n;
  }
  // The W8A8 text of the other test, by the same helper.
  const std::string int_weights = args_text(w, false, memoryless, "channel", "int");
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(1))
    layers.emplace_back(n, naive_scheme(Type::integer, Strategy::channel, Strategy::token));
  EXPECT_EQ(ct::quantization_config(layers, {"lm_head"}).dump(2),
            config("int-quantized", args_text(w, true, "null", "token", "int"), int_weights));
}

// Some layers pack-quantized, some int-quantized: one group each, global
// format mixed-precision, every layer parsed back to its scheme.
TEST(CompressedTensorsNaive, ConfigMixedPrecision) {
  const ct::Scheme w8a8 = naive_scheme(Type::integer, Strategy::channel, Strategy::token);
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(2))
    layers.emplace_back(n, n.find("down_proj") != std::string::npos ? w4g128() : w8a8);
  const ordered_json q = ct::quantization_config(layers, {"lm_head"});
  expect_sorted(q);
  EXPECT_EQ(q["format"], "mixed-precision");
  ASSERT_EQ(q["config_groups"].size(), 2u);
  EXPECT_EQ(q["config_groups"]["group_0"]["format"], "int-quantized");
  EXPECT_EQ(q["config_groups"]["group_1"]["format"], "pack-quantized");
  EXPECT_TRUE(q["config_groups"]["group_1"]["input_activations"].is_null());
  EXPECT_EQ(q["config_groups"]["group_1"]["targets"], ordered_json::parse(R"(["re:.*\\.mlp\\.down_proj$"])"));
  const json parsed = json::parse(q.dump());
  for (const auto& [name, s] : layers) EXPECT_EQ(ct::parse_scheme(parsed, name), s) << name;
  EXPECT_EQ(ct::group_schemes(parsed), (std::vector<ct::Scheme>{w8a8, w4g128()}));
  // Fused shards in two formats are refused as for two pack-quantized schemes.
  layers.clear();
  for (const auto& n : llama_linears(1))
    layers.emplace_back(n, n.find("k_proj") != std::string::npos ? w4g128() : w8a8);
  EXPECT_NE(refusal([&] { ct::quantization_config(layers, {}); }).find("vLLM"), std::string::npos);
}

// What qforge can't run is refused, naming the key.
TEST(CompressedTensorsNaive, ParseSchemeRefusals) {
  const ct::Scheme fp8 = naive_scheme(Type::floating, Strategy::tensor, Strategy::tensor);
  const json base = json::parse(ct::quantization_config({{"a.q_proj", fp8}}, {"lm_head"}).dump());
  ASSERT_EQ(ct::parse_scheme(base, "a.q_proj"), fp8);
  auto refused = [&](const std::function<void(json&)>& edit, const std::string& key) {
    json c = base;
    edit(c);
    const std::string m = refusal([&] { ct::parse_scheme(c, "a.q_proj"); });
    EXPECT_NE(m.find(key), std::string::npos) << m;
    const std::string all = refusal([&] { ct::group_schemes(c); });
    EXPECT_NE(all.find(key), std::string::npos) << all;
  };
  auto g = [](json& c) -> json& { return c["config_groups"]["group_0"]; };
  const std::string w = "group_0.weights.", i = "group_0.input_activations.";
  refused([&](json& c) { g(c)["weights"]["symmetric"] = false; }, w + "symmetric");
  refused([&](json& c) { g(c)["weights"]["num_bits"] = 4; }, w + "num_bits");
  refused([&](json& c) { g(c)["weights"]["strategy"] = "group"; g(c)["weights"]["group_size"] = 128; },
          w + "strategy");
  refused([&](json& c) { g(c)["weights"]["strategy"] = "block"; }, w + "strategy");
  refused([&](json& c) { g(c)["weights"]["block_structure"] = {128, 128}; }, w + "block_structure");
  refused([&](json& c) { g(c)["weights"]["group_size"] = 128; }, w + "group_size");
  refused([&](json& c) { g(c)["weights"]["dynamic"] = true; }, w + "dynamic");
  refused([&](json& c) { g(c)["weights"]["actorder"] = "static"; }, w + "actorder");
  refused([&](json& c) { g(c)["weights"]["type"] = "float8"; }, w + "type");
  refused([&](json& c) { g(c)["input_activations"]["strategy"] = "group"; }, i + "strategy");
  refused([&](json& c) { g(c)["input_activations"]["strategy"] = "token"; }, i + "dynamic");  // static token
  refused([&](json& c) { g(c)["input_activations"]["dynamic"] = true; }, i + "dynamic");      // dynamic tensor
  refused([&](json& c) { g(c)["input_activations"]["dynamic"] = "local"; }, i + "dynamic");
  refused([&](json& c) { g(c)["input_activations"]["symmetric"] = false; }, i + "symmetric");
  refused([&](json& c) { g(c)["input_activations"]["num_bits"] = 4; }, i + "num_bits");
  refused([&](json& c) { g(c)["input_activations"]["type"] = "int"; }, i + "type");
  refused([&](json& c) { g(c)["input_activations"]["group_size"] = 128; }, i + "group_size");
  refused([&](json& c) { g(c)["input_activations"] = json::array(); }, "group_0.input_activations");
  refused([&](json& c) { g(c)["output_activations"] = g(c)["input_activations"]; }, "output_activations");
  refused([&](json& c) { g(c)["format"] = "nvfp4-pack-quantized"; }, "group_0.format");
  // FP8 weights in a pack-quantized group; int8 activations with pack-quantized.
  refused([&](json& c) { g(c)["format"] = "pack-quantized"; }, "input_activations");
  refused([&](json& c) { g(c)["format"] = "pack-quantized"; g(c)["input_activations"] = nullptr; }, w + "type");

  // Accepted spellings: strategy inferred from group_size (-1: channel; null:
  // tensor), the group's format from the global one, the three names alike.
  json c = base;
  g(c)["weights"].erase("strategy");
  g(c)["weights"]["group_size"] = -1;
  EXPECT_EQ(ct::parse_scheme(c, "a.q_proj")->strategy, Strategy::channel);
  g(c)["weights"].erase("group_size");
  g(c)["input_activations"].erase("strategy");
  EXPECT_EQ(ct::parse_scheme(c, "a.q_proj"), fp8);
  g(c).erase("format");
  c["format"] = "naive-quantized";
  EXPECT_EQ(ct::parse_scheme(c, "a.q_proj")->format, ct::Format::naive_quantized);
  EXPECT_EQ(ct::parse_scheme(c, "a.q_proj")->input, fp8.input);
}

// -------------------------------------------------------------- sparsity --
// Pruned linears (qforge/formats/pruned_v1.h "sparsity_structure"):
// sparsity_config as research/llm-compressor.md §2.7 describes it, a pruned
// model without quantized layers, what the reader accepts.

namespace {
// A bool [out, in] zero mask with `zeros` of every 4 along each row.
at::Tensor n_of_four_mask(int64_t out, int64_t in, int zeros) {
  return (at::arange(in).remainder(4) < zeros).unsqueeze(0).expand({out, in}).contiguous();
}
}  // namespace

TEST(CompressedTensorsSparsity, SparsityOfChecksTheClaim) {
  const ct::Sparsity s = ct::sparsity_of(n_of_four_mask(3, 8, 2), "2:4");
  EXPECT_EQ(s.structure, "2:4");
  EXPECT_EQ(s.zeros, 12);
  EXPECT_EQ(s.numel, 24);
  EXPECT_EQ(ct::sparsity_of(n_of_four_mask(3, 8, 3), "2:4").zeros, 18);  // at least N
  EXPECT_EQ(ct::sparsity_of(n_of_four_mask(3, 8, 1), "unstructured").zeros, 6);
  at::Tensor broken = n_of_four_mask(3, 8, 2);
  broken[2][5] = false;
  const std::string m = refusal([&] { ct::sparsity_of(broken, "2:4"); });
  EXPECT_NE(m.find("row 2, inputs [4, 8) hold 1 zeros"), std::string::npos) << m;
  EXPECT_FALSE(refusal([&] { ct::sparsity_of(n_of_four_mask(2, 8, 2), "2:3"); }).empty());  // 8 % 3
  for (const char* bad : {"4:2", "0:4", "2:4:8", "two", "", "2:65"})
    EXPECT_FALSE(refusal([&] { ct::sparsity_of(n_of_four_mask(2, 8, 2), bad); }).empty()) << bad;
}

TEST(CompressedTensorsSparsity, ConfigOfAPrunedModel) {
  std::vector<std::pair<std::string, ct::Sparsity>> pruned;
  for (const auto& n : llama_linears(2)) pruned.emplace_back(n, ct::Sparsity{"2:4", 50, 100});
  pruned.back().second.zeros = 70;  // model.layers.1.mlp.down_proj: more zeros
  const ordered_json s = ct::sparsity_config(pruned, {"lm_head"});
  expect_sorted(s);
  ordered_json names = ordered_json::array();
  for (const auto& n : llama_linears(2)) names.push_back(n);
  EXPECT_EQ(s, ordered_json({{"format", "dense"},
                             {"global_sparsity", (13 * 50 + 70) / 1400.0},
                             {"ignore", {"lm_head"}},
                             {"registry_requires_subclass", false},
                             {"sparsity_structure", "2:4"},
                             {"targets", names}}));
  EXPECT_EQ(ct::sparsity_config({}, {"lm_head"}), ordered_json::object());

  // Nothing quantized: no config group, every linear ignored, and the reader
  // takes every linear for a dense one.
  std::vector<std::string> ignore = llama_linears(2);
  ignore.push_back("lm_head");
  const ordered_json q = ct::quantization_config({}, ignore, s);
  expect_sorted(q);
  EXPECT_EQ(q["config_groups"], ordered_json::object());
  EXPECT_EQ(q["quant_method"], "compressed-tensors");
  EXPECT_EQ(q["sparsity_config"], s);
  const json parsed = json::parse(q.dump());
  EXPECT_TRUE(ct::group_schemes(parsed).empty());
  for (const auto& n : ignore) EXPECT_EQ(ct::parse_scheme(parsed, n), std::nullopt) << n;
  // Without sparsity, no quantized layer is still refused.
  EXPECT_FALSE(refusal([&] { ct::quantization_config({}, ignore); }).empty());

  // Quantized and pruned (2:4 + 4-bit): in the config groups and the targets.
  std::vector<std::pair<std::string, ct::Scheme>> layers;
  for (const auto& n : llama_linears(2)) layers.emplace_back(n, w4g128());
  const json both = json::parse(ct::quantization_config(layers, {"lm_head"}, s).dump());
  EXPECT_EQ(both["sparsity_config"]["targets"], json::parse(names.dump()));
  EXPECT_EQ(ct::parse_scheme(both, "model.layers.0.mlp.up_proj"), w4g128());
}

TEST(CompressedTensorsSparsity, ConfigRefusesFusedShardsPrunedApart) {
  std::vector<std::pair<std::string, ct::Sparsity>> pruned;
  for (const auto& n : llama_linears(1))
    if (n != "model.layers.0.self_attn.k_proj") pruned.emplace_back(n, ct::Sparsity{"2:4", 2, 4});
  const std::string m = refusal(
      [&] { ct::sparsity_config(pruned, {"model.layers.0.self_attn.k_proj", "lm_head"}); });
  EXPECT_NE(m.find("model.layers.0.self_attn.k_proj"), std::string::npos) << m;
  EXPECT_NE(m.find("vLLM"), std::string::npos) << m;
  // Different structures within gate/up.
  pruned.clear();
  for (const auto& n : llama_linears(1))
    pruned.emplace_back(n, ct::Sparsity{n.find("up_proj") != std::string::npos ? "unstructured" : "2:4", 2, 4});
  EXPECT_NE(refusal([&] { ct::sparsity_config(pruned, {"lm_head"}); }).find("up_proj"), std::string::npos);
  // Different structures elsewhere: the model is described as unstructured.
  pruned.clear();
  for (const auto& n : llama_linears(1))
    pruned.emplace_back(n, ct::Sparsity{n.find("down_proj") != std::string::npos ? "4:8" : "2:4", 2, 4});
  EXPECT_EQ(ct::sparsity_config(pruned, {"lm_head"})["sparsity_structure"], "unstructured");
  // A target also ignored; a duplicate.
  EXPECT_FALSE(refusal([&] { ct::sparsity_config(pruned, {pruned[3].first}); }).empty());
  pruned.push_back(pruned[0]);
  EXPECT_FALSE(refusal([&] { ct::sparsity_config(pruned, {}); }).empty());
}
