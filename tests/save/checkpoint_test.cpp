// Quantized checkpoints: the GPTQ (AutoGPTQ v1) checkpoints written by an
// independent implementation (../shared/fixtures) load and reproduce their
// perplexities; qforge's own GPTQ output follows the same layout, reads back
// with an independent unpacker, and its logits equal the dequantized model's
// to float16 tolerance; plans and files a checkpoint cannot hold are refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "../support/test_data.hpp"
#include "../support/pipeline.hpp"
#include "../support/plugins.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/pipeline/results_file.hpp"
#include "qforge_host/save/save_format.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/eval/eval.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;
using nlohmann::json;

namespace {

std::string temp_dir(const std::string& name) {
  return qforge::test::temp_path("qforge_checkpoint", name);
}

qh::Registry& registry() { return qforge::test::plugin_registry(); }

using qforge::test::read_bytes;
std::string read(const fs::path& p) { return read_bytes(p); }

void write(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}

// Perplexity under the fixtures' protocol: the whole of tinystories_valid.txt
// as one stream ([BOS] + tokens), non-overlapping windows of 512.
void expect_fixture_perplexity(const std::string& name) {
  QFORGE_REQUIRE_SHARED(fixtures, "fixtures/gptq_v1_stories260K");
  QFORGE_REQUIRE_SHARED(text, "data/tinystories_valid.txt");
  const json expected = json::parse(read(fs::path(fixtures) / "expected.json"));
  const std::string dir = fixtures + "/" + name;
  qh::Model model = qh::load_model(registry(), dir, at::kFloat);
  for (const auto& b : model.blocks())
    for (const qh::Linear* l : b.linears()) ASSERT_TRUE(l->packed) << l->name << " not packed";
  auto tok = qh::load_tokenizer(dir);
  auto stream = qh::perplexity_stream(*tok, read(text), "");
  const qh::PerplexityResult r = qh::perplexity(model, stream, 512, 16);
  const auto& want = expected["checkpoints"][name];
  EXPECT_EQ(r.windows, 767);
  EXPECT_NEAR(r.ppl, want["ppl"].get<double>(), 1e-5 * want["ppl"].get<double>());
  EXPECT_NEAR(r.mean_nll, want["mean_nll_nats"].get<double>(), 1e-6);
}

TEST(GptqFixtures, W4Group32ActOrderReproducesItsPerplexity) {
  expect_fixture_perplexity("gptq-w4-g32-asym-act");
}

TEST(GptqFixtures, W3Group32ReproducesItsPerplexity) {
  expect_fixture_perplexity("gptq-w3-g32-asym-noact");
}

qh::QuantizeOptions gptq_options(const std::string& shared, const std::string& out) {
  qh::QuantizeOptions o;
  o.model_dir = shared + "/models/stories260K";
  o.out_dir = out;
  o.method = "org.qforge.gptq";
  o.params = {{"bits", "4"}, {"group_size", "32"}, {"desc_act", "true"}, {"sym", "false"}};
  o.calibration.file = shared + "/data/tinystories_v2_calib.txt";
  o.calibration.nsamples = 16;
  o.calibration.seqlen = 128;
  o.calibration.seed = 1;
  return o;
}

// W of a layer read straight from a GPTQ checkpoint the way AutoGPTQ's
// reference dequantizes v1: 4-bit codes along the input dimension (8 per
// word, LSB first), zeros along the output dimension stored as zero - 1.
at::Tensor autogptq_v1_dequantize_4bit(const qh::TensorStore& store, const std::string& name) {
  const at::Tensor qweight = store.load(name + ".qweight", at::kInt);
  const at::Tensor qzeros = store.load(name + ".qzeros", at::kInt);
  const at::Tensor scales = store.load(name + ".scales", at::kFloat);
  const at::Tensor g_idx = store.load(name + ".g_idx", at::kLong);
  const int64_t in = g_idx.size(0), out = qweight.size(1);
  at::Tensor shifts = at::arange(0, 32, 4, at::kInt);
  at::Tensor w = at::bitwise_and(
      at::bitwise_right_shift(qweight.unsqueeze(1), shifts.view({1, 8, 1})), 15);
  w = w.reshape({-1, out}).narrow(0, 0, in);                                       // [in, out]
  at::Tensor z = at::bitwise_and(
      at::bitwise_right_shift(qzeros.unsqueeze(2), shifts.view({1, 1, 8})), 15);
  z = z.reshape({qzeros.size(0), -1}).narrow(1, 0, out) + 1;                         // [groups, out]
  at::Tensor W = scales.index_select(0, g_idx) * (w - z.index_select(0, g_idx)).to(at::kFloat);
  return W.t().contiguous();  // [out, in]
}

TEST(GptqCheckpoint, WritesTheAutoGptqLayoutAndReadsBackLikeTheDequantizedModel) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  QFORGE_REQUIRE_SHARED(fixture, "fixtures/gptq_v1_stories260K/gptq-w4-g32-asym-act");
  const std::string shared = qforge::test::shared_dir();
  const std::string packed_dir = temp_dir("gptq"), deq_dir = temp_dir("deq");
  const auto summary = qforge::test::quantize(registry(), gptq_options(shared, packed_dir), "gptq");
  qforge::test::apply(registry(), shared_model, summary.results_file, deq_dir, "dequantized");

  // config.json and quantize_config.json say what serving engines need.
  const json config = json::parse(read(fs::path(packed_dir) / "config.json"));
  const json& q = config.at("quantization_config");
  EXPECT_EQ(q.at("quant_method"), "gptq");
  EXPECT_EQ(q.at("checkpoint_format"), "gptq");
  EXPECT_EQ(q.at("bits"), 4);
  EXPECT_EQ(q.at("group_size"), 32);
  EXPECT_EQ(q.at("desc_act"), true);
  EXPECT_EQ(q.at("sym"), false);
  EXPECT_EQ(q.at("true_sequential"), true);
  EXPECT_EQ(q.at("static_groups"), false);
  EXPECT_DOUBLE_EQ(q.at("damp_percent").get<double>(), 0.01);
  EXPECT_EQ(json::parse(read(fs::path(packed_dir) / "quantize_config.json")), q);
  EXPECT_EQ(config.at("torch_dtype"), "float16");
  EXPECT_TRUE(fs::exists(fs::path(packed_dir) / "tokenizer.model"));

  // The same tensor names and shapes as the independent writer's checkpoint.
  const qh::TensorStore ours(packed_dir), theirs(fixture);
  EXPECT_EQ(ours.names(), theirs.names());
  for (const auto& name : theirs.names()) {
    EXPECT_EQ(ours.info(name).shape, theirs.info(name).shape) << name;
    if (name.find(".q") != std::string::npos || name.find(".g_idx") != std::string::npos ||
        name.find(".scales") != std::string::npos) {
      EXPECT_EQ(ours.info(name).dtype, theirs.info(name).dtype) << name;
    }
  }

  // An AutoGPTQ-style unpacker reads the dequantized weights the plugin made.
  for (const auto& l : qh::load_results(summary.results_file)) {
    qh::PackedLayer layer(*registry().find_inference_layer(l.result.format), l.result);
    EXPECT_TRUE(at::equal(autogptq_v1_dequantize_4bit(ours, l.report.name), layer.dequantize()))
        << l.report.name;
  }

  // Logits: packed checkpoint vs the float16 dequantized one.
  qh::Model packed = qh::load_model(registry(), packed_dir, at::kFloat);
  qh::Model deq = qh::load_model(registry(), deq_dir, at::kFloat);
  for (const auto& b : packed.blocks())
    for (const qh::Linear* l : b.linears()) ASSERT_TRUE(l->packed) << l->name;
  for (const auto& b : deq.blocks())
    for (const qh::Linear* l : b.linears()) ASSERT_FALSE(l->packed) << l->name;
  auto tok = qh::load_tokenizer(packed_dir);
  auto ids32 = tok->encode("Once upon a time, there was a little girl named Lily. She loved to", true);
  at::Tensor ids = at::tensor(std::vector<int64_t>(ids32.begin(), ids32.end())).unsqueeze(0);
  const at::Tensor a = packed.forward(ids), b = deq.forward(ids);
  const double scale = b.abs().max().item<double>();
  const double diff = (a - b).abs().max().item<double>();
  EXPECT_LT(diff, 2e-3 * scale) << "max |logit diff| " << diff << " for max |logit| " << scale;
  EXPECT_TRUE(at::equal(a.argmax(-1), b.argmax(-1)));

  // Re-applying the saved results as a GPTQ checkpoint writes the same shards.
  const std::string again = temp_dir("again");
  qforge::test::apply(registry(), shared_model, summary.results_file, again, "gptq");
  for (const char* f : {"model-block-00000.safetensors", "model-block-00004.safetensors",
                        "model-rest.safetensors", "config.json", "quantize_config.json"})
    EXPECT_EQ(read(fs::path(again) / f), read(fs::path(packed_dir) / f)) << f;
  fs::remove_all(again);
  fs::remove_all(packed_dir);
  fs::remove_all(deq_dir);
}

// org.qforge.blockwise in the pipeline, with the codes tuned too: the
// checkpoint is still AutoGPTQ v1 (the same tensor names, dtypes and shapes
// and the same quantization_config as without it), codes and scales moved,
// and the independent unpacker reads exactly the weights qforge loads.
TEST(GptqCheckpoint, TunedByBlockwiseStaysAutoGptqV1ForTheUnpacker) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  const std::string shared = qforge::test::shared_dir();
  const std::string plain = temp_dir("plain"), tuned = temp_dir("tuned");
  qforge::test::quantize(registry(), gptq_options(shared, plain), "gptq");
  qh::QuantizeOptions o = gptq_options(shared, tuned);
  o.block_postprocesses = {{"org.qforge.blockwise", {{"epochs", "2"}, {"codes", "true"}}}};
  qforge::test::quantize(registry(), o, "gptq");

  const json a = json::parse(read(fs::path(plain) / "config.json"));
  const json b = json::parse(read(fs::path(tuned) / "config.json"));
  EXPECT_EQ(a.at("quantization_config"), b.at("quantization_config"));
  EXPECT_EQ(read(fs::path(plain) / "quantize_config.json"), read(fs::path(tuned) / "quantize_config.json"));
  const qh::TensorStore before(plain), after(tuned);
  ASSERT_EQ(before.names(), after.names());
  int codes_moved = 0, scales_moved = 0;
  for (const auto& name : before.names()) {
    EXPECT_EQ(before.info(name).dtype, after.info(name).dtype) << name;
    EXPECT_EQ(before.info(name).shape, after.info(name).shape) << name;
    const bool same = at::equal(before.view(name), after.view(name));
    codes_moved += name.find(".qweight") != std::string::npos && !same;
    scales_moved += name.find(".scales") != std::string::npos && !same;
  }
  EXPECT_EQ(scales_moved, 35);
  EXPECT_GT(codes_moved, 0) << "codes=true moved no code";

  qh::Model model = qh::load_model(registry(), tuned, at::kFloat);
  for (const auto& blk : model.blocks())
    for (const qh::Linear* l : blk.linears()) {
      ASSERT_TRUE(l->packed) << l->name;
      EXPECT_TRUE(at::equal(autogptq_v1_dequantize_4bit(after, l->name), l->packed->dequantize()))
          << l->name;
    }
  fs::remove_all(plain);
  fs::remove_all(tuned);
}

// AWQ (org.qforge.awq) before GPTQ: still AutoGPTQ v1 for the independent
// unpacker, with the scaled norms stored beside the packed layers, and the
// results re-applied as a dequantized model compute what the checkpoint does.
TEST(GptqCheckpoint, AwqScaledStaysAutoGptqV1ForTheUnpacker) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  const std::string shared = qforge::test::shared_dir();
  const std::string dir = temp_dir("awq"), deq_dir = temp_dir("awq_deq");
  qh::QuantizeOptions o = gptq_options(shared, dir);
  o.preprocesses = {{"org.qforge.awq", {}}};  // bits, group_size, sym: GPTQ's
  const auto summary = qforge::test::quantize(registry(), o, "gptq");
  qforge::test::apply(registry(), shared_model, summary.results_file, deq_dir, "dequantized");

  const qh::TensorStore store(dir), original(shared_model);
  int norms_moved = 0;
  for (const auto& name : original.names())
    if (name.find("layernorm") != std::string::npos)
      norms_moved += !at::equal(store.load(name, at::kFloat), original.load(name, at::kFloat));
  EXPECT_EQ(norms_moved, 10);  // input and post-attention norms of 5 blocks
  qh::Model model = qh::load_model(registry(), dir, at::kFloat);
  for (const auto& blk : model.blocks())
    for (const qh::Linear* l : blk.linears()) {
      ASSERT_TRUE(l->packed) << l->name;
      EXPECT_TRUE(at::equal(autogptq_v1_dequantize_4bit(store, l->name), l->packed->dequantize()))
          << l->name;
    }
  qh::Model deq = qh::load_model(registry(), deq_dir, at::kFloat);
  at::manual_seed(0);
  const at::Tensor ids = at::randint(1, 512, {2, 48}, at::kLong);
  const at::Tensor a = model.forward(ids), b = deq.forward(ids);
  EXPECT_LT((a - b).abs().max().item<double>(), 2e-3 * b.abs().max().item<double>());
  fs::remove_all(dir);
  fs::remove_all(deq_dir);
}

// Round to nearest (org.qforge.rtn/1), alone and after AWQ, re-packed by the
// host into AutoGPTQ v1: the unpacker reads exactly what qforge loads, which
// is RTN's weight with its scales rounded to float16.
TEST(GptqCheckpoint, RtnAndAwqRtnArePackedIntoAutoGptqV1ForTheUnpacker) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  const std::string shared = qforge::test::shared_dir();
  for (bool awq : {false, true}) {
    SCOPED_TRACE(awq ? "AWQ + RTN" : "RTN");
    const std::string dir = temp_dir(awq ? "awq_rtn" : "rtn");
    qh::QuantizeOptions o = gptq_options(shared, dir);
    o.method = "org.qforge.rtn";
    o.params = {{"bits", "4"}, {"group_size", "32"}, {"sym", "false"}};
    if (awq) o.preprocesses = {{"org.qforge.awq", {}}};
    const auto summary = qforge::test::quantize(registry(), o, "gptq");
    const json q = json::parse(read(fs::path(dir) / "config.json")).at("quantization_config");
    EXPECT_EQ(q.at("bits"), 4);
    EXPECT_EQ(q.at("group_size"), 32);
    EXPECT_EQ(q.at("sym"), false);
    EXPECT_EQ(q.at("desc_act"), false);
    EXPECT_EQ(json::parse(read(fs::path(dir) / "quantize_config.json")), q);
    const qh::TensorStore store(dir);
    qh::Model model = qh::load_model(registry(), dir, at::kFloat);
    std::map<std::string, at::Tensor> rtn;
    for (const auto& l : qh::load_results(summary.results_file))
      rtn[l.report.name] =
          qh::PackedLayer(*registry().find_inference_layer(l.result.format), l.result).dequantize();
    for (const auto& blk : model.blocks())
      for (const qh::Linear* l : blk.linears()) {
        ASSERT_TRUE(l->packed) << l->name;
        EXPECT_EQ(l->packed->format_id(), "org.qforge.gptq/1");
        const at::Tensor w = autogptq_v1_dequantize_4bit(store, l->name);
        EXPECT_TRUE(at::equal(w, l->packed->dequantize())) << l->name;
        const at::Tensor& want = rtn.at(l->name);  // float32 scales: float16 rounding only
        EXPECT_LE((w - want).abs().max().item<double>(), 1e-3 * want.abs().max().item<double>())
            << l->name;
      }
    fs::remove_all(dir);
  }
}

// A group whose weights are all >= 0 gets RTN's asymmetric zero point 0,
// which v1 (zero - 1) cannot store: refused with the layer named.
TEST(GptqCheckpoint, RefusesAZeroPointOfZero) {
  const qh::Component* rtn = registry().find("org.qforge.rtn");
  ASSERT_NE(rtn, nullptr);
  qh::ParamValues params("org.qforge.rtn", rtn->desc->params, rtn->desc->param_count,
                         {{"bits", "4"}, {"group_size", "32"}, {"sym", "false"}});
  qh::QuantizeRequest req;
  req.layer_name = "model.layers.0.self_attn.q_proj";
  at::manual_seed(0);
  req.weight = at::randn({8, 64});
  req.weight[3].abs_();  // row 3: every weight >= 0
  const qh::QuantResult r = qh::quantize_layer(*rtn, req, params);
  auto format = qh::make_save_format("gptq");
  try {
    format->packed_linear(req.layer_name, r);
    FAIL() << "expected a refusal";
  } catch (const qh::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("zero point of 0"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(req.layer_name), std::string::npos) << e.what();
  }
}

TEST(GptqCheckpoint, RefusesPlansItCannotHoldBeforeWriting) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  const std::string shared = qforge::test::shared_dir();
  {
    auto o = gptq_options(shared, temp_dir("pruned"));
    o.method = "org.qforge.magnitude";  // writes org.qforge.pruned/1: no grid to pack
    o.params = {};
    try {
      qforge::test::quantize(registry(), o, "gptq");
      ADD_FAILURE() << "pruned float weights into a GPTQ checkpoint were accepted";
    } catch (const qh::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("org.qforge.gptq/1"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(o.out_dir)) << "a refused plan left files behind";
  }
  {
    auto o = gptq_options(shared, temp_dir("partial"));
    o.selection.exclude_keywords = {"k_proj"};
    try {
      qforge::test::quantize(registry(), o, "gptq");
      ADD_FAILURE() << "a GPTQ checkpoint with unquantized block layers was accepted";
    } catch (const qh::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("k_proj"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(o.out_dir));
  }
  {
    // Mixed bits cannot be one quantization_config: refused at the first
    // block, before its shard is written.
    auto o = gptq_options(shared, temp_dir("mixed"));
    o.overrides = {{"*down_proj", {{"bits", "8"}}}};
    try {
      qforge::test::quantize(registry(), o, "gptq");
      ADD_FAILURE() << "a GPTQ checkpoint with mixed bits was accepted";
    } catch (const qh::UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("differ in bits (4, 8)"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(fs::path(o.out_dir) / "model-block-00000.safetensors"));
    fs::remove_all(o.out_dir);
  }
}

// A copy of a fixture checkpoint with its config edited (and optionally its
// tensors replaced) must be refused with a message naming the problem.
void expect_refused(const std::string& name, const std::function<void(json&)>& edit_config,
                    const std::string& needle,
                    const std::function<void(std::map<std::string, at::Tensor>&)>& edit_tensors = {}) {
  QFORGE_REQUIRE_SHARED(fixture, "fixtures/gptq_v1_stories260K/gptq-w3-g32-asym-noact");
  const fs::path dir = temp_dir(name);
  fs::create_directories(dir);
  json config = json::parse(read(fs::path(fixture) / "config.json"));
  edit_config(config);
  write(dir / "config.json", config.dump());
  if (edit_tensors) {
    const qh::TensorStore store(fixture);
    std::map<std::string, at::Tensor> tensors;
    for (const auto& n : store.names()) tensors[n] = store.view(n);
    edit_tensors(tensors);
    qh::save_safetensors((dir / "model.safetensors").string(),
                         {tensors.begin(), tensors.end()});
  } else {
    fs::create_symlink(fs::path(fixture) / "model.safetensors", dir / "model.safetensors");
  }
  try {
    qh::load_model(registry(), dir.string(), at::kFloat);
    ADD_FAILURE() << name << ": loaded";
  } catch (const qh::UsageError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << name << ": " << e.what();
  }
  fs::remove_all(dir);
}

TEST(GptqCheckpoint, RefusesCheckpointsItCannotRead) {
  expect_refused("awq", [](json& c) { c["quantization_config"]["quant_method"] = "awq"; }, "awq");
  expect_refused("v2", [](json& c) { c["quantization_config"]["checkpoint_format"] = "gptq_v2"; },
                 "gptq_v2");
  expect_refused("bits", [](json& c) { c["quantization_config"]["bits"] = 9; }, "bits");
  expect_refused("group", [](json& c) { c["quantization_config"]["group_size"] = 0; }, "group_size");
  expect_refused("sym", [](json& c) { c["quantization_config"]["sym"] = "yes"; }, "sym");
  // The config says 4 bits but the tensors hold 3-bit words.
  expect_refused("wrong_bits", [](json& c) { c["quantization_config"]["bits"] = 4; },
                 "model.layers.0.self_attn.q_proj");
  expect_refused("short_qweight", [](json&) {}, "qweight", [](auto& t) {
    auto& q = t.at("model.layers.2.mlp.down_proj.qweight");
    q = q.narrow(0, 0, q.size(0) - 1).clone();
  });
  expect_refused("no_scales", [](json&) {}, "scales",
                 [](auto& t) { t.erase("model.layers.1.self_attn.v_proj.scales"); });
  expect_refused("bad_g_idx", [](json&) {}, "g_idx", [](auto& t) {
    auto& g = t.at("model.layers.0.mlp.up_proj.g_idx");
    g = g.clone();
    g[0] = 1000;
  });
  expect_refused("float_scales", [](json&) {}, "scales", [](auto& t) {
    auto& s = t.at("model.layers.0.mlp.up_proj.scales");
    s = s.to(at::kFloat);
  });
}

}  // namespace
