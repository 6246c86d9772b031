// compressed-tensors checkpoints end to end: GPTQ through the pipeline,
// saved as pack-quantized, read back packed by qforge (logits as the
// dequantized save's, within float16), and read by the independent decoder
// of ct_decoder.hpp (the plugin's weights exactly).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "../support/pipeline.hpp"
#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "ct_decoder.hpp"
#include "qforge_host/io/safetensors.hpp"
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
  o.method = "org.qforge.gptq";
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
    const at::Tensor want =
        qh::PackedLayer(*registry.find_inference_layer(l.result.format), l.result).dequantize();
    EXPECT_TRUE(at::equal(qforge::test::ct_decoder::weight(d), want));
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
                true, 32, false, 2}),
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
