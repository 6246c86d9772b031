// compressed-tensors checkpoints end to end: GPTQ through the pipeline,
// saved as pack-quantized, read back packed by qforge (logits as the
// dequantized save's, within float16), and read by the independent decoder
// of ct_decoder.hpp (the plugin's weights exactly); W8A8 / FP8 results saved
// as int-/float-/naive-quantized (and mixed with pack-quantized), their
// tensors' dtypes, the decoder, reading back and tuned layers written back;
// AWQ's scaled model with round-to-nearest weights as pack-quantized.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <qforge/formats/ct_naive_quantized_v1.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "../support/pipeline.hpp"
#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "ct_decoder.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/pipeline/results_file.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/save/checkpoint.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;
using nlohmann::json;

namespace {

struct Setting {
  std::string name;
  std::map<std::string, std::string> params;
  bool down_proj_8bit = false;
  bool sym = true;
  int64_t group_size = 32;
  bool act_order = false;
  size_t config_groups = 1;  // distinct (bits, strategy, group size) among the layers
  std::string method = "org.qforge.gptq";
  std::vector<qh::ComponentRun> preprocesses = {};
};

void PrintTo(const Setting& s, std::ostream* os) { *os << s.name; }

class CtCheckpoint : public ::testing::TestWithParam<Setting> {};

TEST_P(CtCheckpoint, ReadsBackPackedAndDecodesIndependently) {
  QFORGE_REQUIRE_SHARED(model_dir, "models/stories260K");
  const Setting& s = GetParam();
  qh::Registry& registry = qforge::test::plugin_registry();
  const std::string ct_dir = qforge::test::temp_path("qforge_ct", s.name);
  const std::string deq_dir = qforge::test::temp_path("qforge_ct", s.name + "_deq");
  qh::QuantizeOptions o;
  o.model_dir = model_dir;
  o.out_dir = ct_dir;
  o.method = s.method;
  o.preprocesses = s.preprocesses;
  o.params = s.params;
  if (s.down_proj_8bit) o.overrides = {{"*down_proj", {{"bits", "8"}}}};
  o.calibration.file = qforge::test::shared_dir() + "/data/tinystories_v2_calib.txt";
  o.calibration.nsamples = 16;
  o.calibration.seqlen = 128;
  const auto summary = qforge::test::quantize(registry, o, "compressed-tensors");
  qforge::test::apply(registry, model_dir, summary.results_file, deq_dir, "dequantized");

  // quantization_config as compressed-tensors writes it.
  const json config = json::parse(qforge::test::read_bytes(fs::path(ct_dir) / "config.json"));
  const json& q = config.at("quantization_config");
  EXPECT_EQ(q.at("quant_method"), "compressed-tensors");
  EXPECT_EQ(q.at("format"), "pack-quantized");
  EXPECT_EQ(q.at("quantization_status"), "compressed");
  EXPECT_EQ(q.at("ignore"), json::array({"lm_head"}));
  EXPECT_EQ(q.at("config_groups").size(), s.config_groups);
  for (const auto& [name, group] : q.at("config_groups").items()) {
    const json& w = group.at("weights");
    EXPECT_EQ(w.at("symmetric"), s.sym) << name;
    EXPECT_EQ(w.at("actorder") == "group", s.act_order) << name;
    EXPECT_TRUE(group.at("input_activations").is_null());
  }

  // qforge reads it back packed, with the dequantized save's logits.
  qh::Model packed = qh::load_model(registry, ct_dir, at::kFloat);
  qh::Model dense = qh::load_model(registry, deq_dir, at::kFloat);
  for (const auto& b : packed.blocks())
    for (const qh::Linear* l : b.linears()) ASSERT_TRUE(l->packed) << l->name << " not packed";
  at::manual_seed(0);
  at::Tensor ids = at::randint(1, 512, {2, 48}, at::kLong);
  at::Tensor a = packed.forward(ids), b = dense.forward(ids);
  const double tol = 2e-3 * b.abs().max().item<double>();
  EXPECT_LE((a - b).abs().max().item<double>(), tol);
  // Same greedy token, but for near-ties (within the tolerance).
  at::Tensor b_at_a = b.gather(-1, a.argmax(-1, true)).squeeze(-1);
  EXPECT_LE((std::get<0>(b.max(-1)) - b_at_a).max().item<double>(), 2 * tol);

  // The independent decoder reads exactly the plugin's weights.
  const qh::TensorStore store(ct_dir);
  for (const auto& l : qh::load_results(summary.results_file)) {
    SCOPED_TRACE(l.report.name);
    const bool down = l.report.name.find("down_proj") != std::string::npos;
    const int bits = s.down_proj_8bit && down ? 8 : 4;
    const int64_t in = store.info(l.report.name + ".weight_shape").shape.empty()
                           ? 0
                           : store.load(l.report.name + ".weight_shape", at::kLong)[1].item<int64_t>();
    const int64_t group = s.group_size >= in ? -1 : s.group_size;
    qforge::test::ct_decoder::Tensors tensors;
    for (const char* t : {"weight_packed", "weight_scale", "weight_shape", "weight_zero_point",
                          "weight_g_idx"})
      if (store.contains(l.report.name + "." + t))
        tensors.emplace_back(l.report.name + "." + t, store.view(l.report.name + "." + t));
    const auto d = qforge::test::ct_decoder::decode(tensors, l.report.name, bits, s.sym, group,
                                                    s.act_order);
    const at::Tensor decoded = qforge::test::ct_decoder::weight(d);
    // What qforge loads; and GPTQ's weights themselves (its grid has float16
    // scales; RTN's float32 scales are rounded to float16 by the format).
    const qh::Linear* loaded = nullptr;
    for (auto& blk : packed.blocks())
      for (const qh::Linear* x : blk.linears())
        if (x->name == l.report.name) loaded = x;
    ASSERT_NE(loaded, nullptr);
    EXPECT_TRUE(at::equal(decoded, loaded->packed->dequantize()));
    if (s.method == "org.qforge.gptq") {
      EXPECT_TRUE(at::equal(decoded, qh::PackedLayer(*registry.find_inference_layer(l.result.format),
                                                     l.result).dequantize()));
    }
  }
  fs::remove_all(ct_dir);
  fs::remove_all(deq_dir);
}

INSTANTIATE_TEST_SUITE_P(
    Gptq, CtCheckpoint,
    ::testing::Values(
        Setting{"w4_g32_sym", {{"bits", "4"}, {"group_size", "32"}, {"sym", "true"}}},
        // stories260K's inputs are 64 wide (one group: strategy channel) except
        // down_proj's 172 (two groups of 128): two config groups.
        Setting{"w4_g128_sym", {{"bits", "4"}, {"group_size", "128"}, {"sym", "true"}}, false,
                true, 128, false, 2},
        Setting{"w4_g32_asym_act",
                {{"bits", "4"}, {"group_size", "32"}, {"sym", "false"}, {"desc_act", "true"}},
                false, false, 32, true},
        Setting{"w4_g32_sym_down8", {{"bits", "4"}, {"group_size", "32"}, {"sym", "true"}}, true,
                true, 32, false, 2},
        // AWQ's scales folded into the norms, then round to nearest.
        Setting{"awq_rtn_w4_g32_asym", {{"bits", "4"}, {"group_size", "32"}, {"sym", "false"}},
                false, false, 32, false, 1, "org.qforge.rtn", {{"org.qforge.awq", {}}}}),
    [](const ::testing::TestParamInfo<Setting>& i) { return i.param.name; });

}  // namespace

namespace {

// Shards vLLM fuses (q/k/v, gate/up) need one scheme and one ignore status:
// a selection that splits them is refused before any work, an override that
// splits them at the first block, before its shard is written.
TEST(CtCheckpointRefusals, FusedShardsMustAgree) {
  QFORGE_REQUIRE_SHARED(model_dir, "models/stories260K");
  qh::Registry& registry = qforge::test::plugin_registry();
  qh::QuantizeOptions o;
  o.model_dir = model_dir;
  o.method = "org.qforge.gptq";
  o.calibration.file = qforge::test::shared_dir() + "/data/tinystories_v2_calib.txt";
  o.calibration.nsamples = 4;
  o.calibration.seqlen = 64;
  auto refusal = [&](const qh::QuantizeOptions& opts) -> std::string {
    try {
      qforge::test::quantize(registry, opts, "compressed-tensors");
    } catch (const qh::UsageError& e) {
      return e.what();
    }
    return "";
  };
  o.out_dir = qforge::test::temp_path("qforge_ct", "split_selection");
  o.selection.exclude_keywords = {"k_proj"};
  EXPECT_NE(refusal(o).find("k_proj is ignored"), std::string::npos);
  EXPECT_FALSE(fs::exists(o.out_dir)) << "a refused plan left files behind";

  o.out_dir = qforge::test::temp_path("qforge_ct", "split_override");
  o.selection.exclude_keywords.clear();
  o.overrides = {{"*q_proj", {{"bits", "8"}}}};
  EXPECT_NE(refusal(o).find("differ; vLLM fuses them"), std::string::npos);
  EXPECT_FALSE(fs::exists(fs::path(o.out_dir) / qh::CheckpointWriter::shard_name(0)));
  fs::remove_all(o.out_dir);
}

}  // namespace

// ===================================================== int-/float-/naive-quantized --
namespace {

using qforge::test::ct_decoder::decode_naive;

// Every finite E4M3FN number, built from its fields, and its byte.
struct E4m3Table {
  at::Tensor values = at::empty({254}, at::kFloat);
  at::Tensor bytes = at::empty({254}, at::kByte);
  E4m3Table() {
    int64_t i = 0;
    for (int b = 0; b < 256; ++b) {
      if ((b & 0x7F) == 0x7F) continue;
      const int e = (b >> 3) & 0xF, m = b & 7;
      const float v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
      values.data_ptr<float>()[i] = (b & 0x80) ? -v : v;
      bytes.data_ptr<uint8_t>()[i++] = static_cast<uint8_t>(b);
    }
  }
};

struct NaivePreset {
  std::string name;
  bool fp8 = false;
  bool channel = true;
  std::string input;  // "token" (dynamic), "tensor" (static) or "" (none)
  std::string format;
  bool down_proj_w8a16 = false;  // down_proj: int weights alone (pack-quantized)
};

void PrintTo(const NaivePreset& p, std::ostream* os) { *os << p.name; }

// What a W8A8 / FP8 quantizer returns for `w` (round to nearest; scales
// absmax / 127 or / 448, rounded to float16 numbers), dequantized = s·q.
qh::QuantResult naive_result(const at::Tensor& w, bool fp8, bool channel, const std::string& input) {
  static const E4m3Table table;
  const at::Tensor absmax = channel ? w.abs().amax(1, true) : w.abs().max().reshape({1});
  const at::Tensor s = (absmax / (fp8 ? 448.0 : 127.0)).clamp_min(1e-4).to(at::kHalf).to(at::kFloat);
  const at::Tensor x = w / s;
  at::Tensor codes, values;
  if (fp8) {
    const at::Tensor idx = (x.unsqueeze(-1) - table.values).abs().argmin(-1);
    codes = table.bytes.index_select(0, idx.reshape({-1})).reshape(w.sizes());
    values = table.values.index_select(0, idx.reshape({-1})).reshape(w.sizes());
  } else {
    values = x.round().clamp(-128, 127);
    codes = values.to(at::kChar);
  }
  const char* type = fp8 ? "float" : "int";
  qh::QuantResult r;
  r.format = QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1;
  json in = nullptr;
  if (!input.empty())
    in = {{"num_bits", 8}, {"type", type}, {"symmetric", true}, {"strategy", input}, {"dynamic", input == "token"}};
  r.metadata = json{{"weights", {{"num_bits", 8}, {"type", type}, {"symmetric", true},
                                 {"strategy", channel ? "channel" : "tensor"}}},
                    {"input_activations", in},
                    {"in_features", w.size(1)},
                    {"out_features", w.size(0)}}
                   .dump();
  r.tensors = {{"weight", codes}, {"weight_scale", s}};
  if (input == "tensor") r.tensors["input_scale"] = at::full({1}, 0.0390625f);
  r.dequantized = s * values;
  return r;
}

bool is_down(const std::string& name) { return name.find("down_proj") != std::string::npos; }

class CtNaiveCheckpoint : public ::testing::TestWithParam<NaivePreset> {};

TEST_P(CtNaiveCheckpoint, WritesDecodesReadsAndStoresTuned) {
  QFORGE_REQUIRE_SHARED(model_dir, "models/stories260K");
  const NaivePreset& p = GetParam();
  qh::Registry& registry = qforge::test::plugin_registry();
  const std::string ct_dir = qforge::test::temp_path("qforge_ct_naive", p.name);
  const std::string results = ct_dir + ".results.safetensors";

  // Results for every block linear, through a results file as `quantize` leaves them.
  std::vector<qh::SavedLayer> saved;
  {
    const qh::Model model = qh::Model::load(model_dir, at::kFloat);
    for (const auto& b : model.blocks())
      for (const qh::Linear* l : b.linears()) {
        qh::SavedLayer s;
        s.report.name = l->name;
        s.result = p.down_proj_w8a16 && is_down(l->name) ? naive_result(l->weight, false, true, "")
                                                         : naive_result(l->weight, p.fp8, p.channel, p.input);
        s.report.format = s.result.format;
        s.report.metadata = s.result.metadata;
        saved.push_back(std::move(s));
      }
  }
  qh::save_results(results, "test.naive", saved);
  qforge::test::apply(registry, model_dir, results, ct_dir, "compressed-tensors");

  // quantization_config: one group per scheme, the format per §4.1.
  const json config = json::parse(qforge::test::read_bytes(fs::path(ct_dir) / "config.json"));
  const json& q = config.at("quantization_config");
  EXPECT_EQ(q.at("format"), p.down_proj_w8a16 ? "mixed-precision" : p.format);
  EXPECT_EQ(q.at("ignore"), json::array({"lm_head"}));
  ASSERT_EQ(q.at("config_groups").size(), p.down_proj_w8a16 ? 2u : 1u);
  const json& g = q.at("config_groups").at("group_0");
  EXPECT_EQ(g.at("format"), p.format);
  EXPECT_EQ(g.at("weights").at("type"), p.fp8 ? "float" : "int");
  EXPECT_EQ(g.at("weights").at("strategy"), p.channel ? "channel" : "tensor");
  if (p.input.empty()) {
    EXPECT_TRUE(g.at("input_activations").is_null());
  } else {
    const json& a = g.at("input_activations");
    EXPECT_EQ(a.at("strategy"), p.input);
    EXPECT_EQ(a.at("dynamic"), p.input == "token");
    EXPECT_EQ(a.at("observer"), p.input == "token" ? json(nullptr) : json("static_minmax"));
    EXPECT_EQ(a.at("type"), p.fp8 ? "float" : "int");
  }
  if (p.down_proj_w8a16) {
    const json& d = q.at("config_groups").at("group_1");
    EXPECT_EQ(d.at("format"), "pack-quantized");
    EXPECT_EQ(d.at("targets"), json::array({"re:.*\\.mlp\\.down_proj$"}));
    EXPECT_EQ(d.at("weights").at("num_bits"), 8);
  }

  // The tensors as safetensors stores them, and the independent decoder.
  {
    const qh::TensorStore store(ct_dir);
    for (const auto& l : saved) {
      SCOPED_TRACE(l.report.name);
      const std::string& name = l.report.name;
      const at::Tensor want = l.result.dequantized;
      const int64_t n = want.size(0), k = want.size(1);
      if (p.down_proj_w8a16 && is_down(name)) {
        EXPECT_EQ(store.info(name + ".weight_packed").dtype, qh::StDtype::I32);
        EXPECT_FALSE(store.contains(name + ".weight"));
        qforge::test::ct_decoder::Tensors t;
        for (const char* s : {"weight_packed", "weight_scale", "weight_shape"})
          t.emplace_back(name + "." + s, store.view(name + "." + s));
        EXPECT_TRUE(at::equal(qforge::test::ct_decoder::weight(qforge::test::ct_decoder::decode(t, name, 8, true, -1, false)),
                              want));
        continue;
      }
      EXPECT_EQ(store.info(name + ".weight").dtype, p.fp8 ? qh::StDtype::F8_E4M3 : qh::StDtype::I8);
      EXPECT_EQ(store.info(name + ".weight").shape, (std::vector<int64_t>{n, k}));
      EXPECT_EQ(store.info(name + ".weight_scale").dtype, qh::StDtype::F16);
      const std::vector<int64_t> scale_shape = p.channel ? std::vector<int64_t>{n, 1} : std::vector<int64_t>{1};
      EXPECT_EQ(store.info(name + ".weight_scale").shape, scale_shape);
      EXPECT_EQ(store.contains(name + ".input_scale"), p.input == "tensor");
      if (p.input == "tensor") {
        EXPECT_EQ(store.info(name + ".input_scale").dtype, qh::StDtype::F16);
        EXPECT_EQ(store.info(name + ".input_scale").shape, std::vector<int64_t>{1});
      }
      EXPECT_FALSE(store.contains(name + ".weight_packed"));
      const qforge::test::ct_decoder::Tensors t = {{name + ".weight", store.view(name + ".weight")},
                                                   {name + ".weight_scale", store.view(name + ".weight_scale")}};
      EXPECT_TRUE(at::equal(decode_naive(t, name, p.fp8), want));
    }
  }

  // Read back packed when the inference layer is loaded (each layer's
  // weights exactly); refused with a clear message otherwise.
  if (registry.find_inference_layer(QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1) == nullptr) {
    try {
      qh::load_model(registry, ct_dir, at::kFloat);
      ADD_FAILURE() << "loaded without an inference layer for " QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1;
    } catch (const qh::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("qforge plugins"), std::string::npos) << e.what();
    }
  } else {
    const qh::Model packed = qh::load_model(registry, ct_dir, at::kFloat);
    std::map<std::string, const qh::Linear*> linears;
    for (const auto& b : packed.blocks())
      for (const qh::Linear* l : b.linears()) linears[l->name] = l;
    for (const auto& l : saved) {
      const qh::Linear* got = linears.at(l.report.name);
      ASSERT_TRUE(got->packed) << l.report.name;
      EXPECT_EQ(got->packed->format_id(), p.down_proj_w8a16 && is_down(l.report.name)
                                              ? "org.qforge.ct-pack-quantized/1"
                                              : QFORGE_FORMAT_CT_NAIVE_QUANTIZED_V1);
      EXPECT_TRUE(at::equal(got->packed->dequantize(), l.result.dequantized)) << l.report.name;
    }
  }

  // A tuned layer written back: its scales change, every weight keeps its dtype.
  const qh::SavedLayer& first = saved.front();
  qh::QuantResult tuned = first.result;
  tuned.tensors["weight_scale"] = first.result.tensors.at("weight_scale") * 2;
  qh::store_tuned_layers(ct_dir, {{first.report.name, tuned}});
  {
    const qh::TensorStore store(ct_dir);
    EXPECT_TRUE(at::equal(store.load(first.report.name + ".weight_scale", at::kFloat),
                          tuned.tensors.at("weight_scale")));
    for (const auto& l : saved)
      if (!(p.down_proj_w8a16 && is_down(l.report.name))) {
        EXPECT_EQ(store.info(l.report.name + ".weight").dtype, p.fp8 ? qh::StDtype::F8_E4M3 : qh::StDtype::I8);
        EXPECT_TRUE(at::equal(store.view(l.report.name + ".weight"), l.result.tensors.at("weight")));
      }
  }
  fs::remove_all(ct_dir);
  fs::remove(results);
}

INSTANTIATE_TEST_SUITE_P(
    Presets, CtNaiveCheckpoint,
    ::testing::Values(NaivePreset{"W8A8", false, true, "token", "int-quantized"},
                      NaivePreset{"W8A8_static", false, false, "tensor", "int-quantized"},
                      NaivePreset{"FP8", true, false, "tensor", "float-quantized"},
                      NaivePreset{"FP8_DYNAMIC", true, true, "token", "float-quantized"},
                      NaivePreset{"FP8_weight_only", true, true, "", "naive-quantized"},
                      NaivePreset{"W8A8_down_W8A16", false, true, "token", "int-quantized", true}),
    [](const ::testing::TestParamInfo<NaivePreset>& i) { return i.param.name; });

}  // namespace
