// --save-format qforge (host/src/save/native.cpp): any packed format is
// stored as its quantizer made it and loads back packed through its own
// inference layer. Checked for the in-tree RTN and GPTQ formats and for a
// third-party format the host has never heard of (third_party/sign.cpp):
// every stored packed tensor is bit-identical to quant_results.safetensors
// (dtype included), config.json lists each layer's format, metadata and
// tensors, and the loaded model's logits equal, bit for bit, those of the
// same checkpoint with the in-memory packed layers attached. Refused: a
// format with no loaded inference layer, tampered quantization_configs,
// tensor names the layout cannot hold (before the block's shard is written).
// A resumed run writes the same checkpoint as an uninterrupted one.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "../support/pipeline.hpp"
#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/save/checkpoint.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;
using nlohmann::json;

namespace {

constexpr const char* kSignFormat = "org.example.sign/1";

// The in-tree plugins and the third-party sign plugin (built outside the
// default plugin directory).
qh::Registry& registry_with_sign() {
  static qh::Registry* r = [] {
    auto* reg = new qh::Registry();
    reg->use_default_directories(false);
    reg->add_directory(std::string(QFORGE_TEST_BUILD_DIR) + "/lib/qforge/plugins");
    reg->add_directory(QFORGE_TEST_SIGN_PLUGIN_DIR);
    reg->load();
    return reg;
  }();
  return *r;
}

// The in-tree plugins only: no inference layer reads org.example.sign/1.
qh::Registry& in_tree_registry() { return qforge::test::plugin_registry(); }

std::string temp_dir(const std::string& name) {
  return qforge::test::temp_path("qforge_native", name);
}

json read_json(const fs::path& p) { return json::parse(qforge::test::read_bytes(p)); }

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream(p, std::ios::binary) << text;
}

qh::QuantizeOptions options(const std::string& method, const qforge::test::Settings& params,
                            const std::string& out) {
  const std::string shared = qforge::test::shared_dir();
  qh::QuantizeOptions o;
  o.model_dir = shared + "/models/stories260K";
  o.out_dir = out;
  o.method = method;
  o.params = params;
  o.calibration.file = shared + "/data/tinystories_v2_calib.txt";
  o.calibration.nsamples = 16;
  o.calibration.seqlen = 128;
  o.calibration.seed = 1;
  return o;
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

at::Tensor story_ids() {
  // A fixed run of token ids (the tokenizer is not under test here).
  return at::arange(1, 97, at::kLong).remainder(500).add(3).unsqueeze(0);
}

// The checkpoint in `dir` read with the packed layers of `results` attached
// in memory (not through the qforge reader): the dense tensors are the
// checkpoint's float16 ones, so its logits must equal the reader's exactly.
qh::Model with_results_attached(const qh::Registry& registry, const std::string& dir,
                                const std::vector<qh::SavedLayer>& results) {
  std::map<std::string, const qh::QuantResult*> by_name;
  for (const auto& l : results) by_name[l.report.name] = &l.result;
  return qh::Model::load(dir, at::kFloat, true,
                         [&](const qh::TensorStore&, qh::Linear& l, int64_t, int64_t, bool) {
                           auto it = by_name.find(l.name);
                           if (it == by_name.end()) return false;
                           l.packed = std::make_shared<qh::PackedLayer>(
                               *registry.find_inference_layer(it->second->format), *it->second);
                           return true;
                         });
}

// What every qforge checkpoint must satisfy, whatever its packed format.
void expect_round_trip(const qh::Registry& registry, const std::string& dir,
                       const std::string& results_file) {
  const std::vector<qh::SavedLayer> results = qh::load_results(results_file);
  const json config = read_json(fs::path(dir) / "config.json");
  const json& q = config.at("quantization_config");
  EXPECT_EQ(q.at("quant_method"), "qforge");
  EXPECT_EQ(q.at("format_version"), 1);
  ASSERT_EQ(q.at("layers").size(), results.size());
  const qh::TensorStore store(dir);
  for (const auto& l : results) {
    const json& e = q.at("layers").at(l.report.name);
    EXPECT_EQ(e.at("format"), l.result.format);
    EXPECT_EQ(e.at("metadata"), json::parse(l.result.metadata)) << l.report.name;
    std::vector<std::string> names;
    for (const auto& [t, tensor] : l.result.tensors) {
      names.push_back(t);
      const std::string stored = l.report.name + "." + t;
      ASSERT_TRUE(store.contains(stored)) << stored;
      EXPECT_TRUE(same_bytes(store.view(stored), tensor))
          << stored << " is not stored bit for bit as " << at::toString(tensor.scalar_type());
    }
    EXPECT_EQ(e.at("tensors").get<std::vector<std::string>>(), names) << l.report.name;
    EXPECT_FALSE(store.contains(l.report.name + ".weight")) << l.report.name;
  }
  // Dense tensors are float16, as in every format.
  EXPECT_EQ(store.view("model.embed_tokens.weight").scalar_type(), at::kHalf);
  EXPECT_EQ(store.view("model.layers.0.input_layernorm.weight").scalar_type(), at::kHalf);

  qh::Model loaded = qh::load_model(registry, dir, at::kFloat);
  size_t packed = 0;
  for (const auto& b : loaded.blocks())
    for (const qh::Linear* l : b.linears()) packed += l->packed ? 1 : 0;
  EXPECT_EQ(packed, results.size());
  const qh::Model reference = with_results_attached(registry, dir, results);
  EXPECT_TRUE(at::equal(loaded.forward(story_ids()), reference.forward(story_ids())))
      << "the loaded checkpoint's logits differ from the in-memory packed layers'";
}

// The parameter: the in-tree method's short name ("rtn" -> org.qforge.rtn,
// which writes org.qforge.rtn/1).
class NativeInTree : public ::testing::TestWithParam<std::string> {};

TEST_P(NativeInTree, StoresThePackedTensorsAsTheyAreAndReadsThemBackPacked) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string method = "org.qforge." + GetParam(), format = method + "/1";
  qforge::test::Settings params = {{"bits", "4"}, {"group_size", "32"}};
  if (GetParam() == "gptq") params["desc_act"] = "true";
  const std::string out = temp_dir(GetParam());
  const auto summary =
      qforge::test::quantize(in_tree_registry(), options(method, params, out), "qforge");
  ASSERT_EQ(summary.layers.size(), 35u);  // 5 blocks x 7 linears
  for (const auto& l : summary.layers) EXPECT_EQ(l.format, format);
  expect_round_trip(in_tree_registry(), out, summary.results_file);
  fs::remove_all(out);
}

INSTANTIATE_TEST_SUITE_P(Formats, NativeInTree, ::testing::Values("rtn", "gptq"),
                         [](const auto& info) { return info.param; });

// The sign checkpoint (MLP layers packed, attention dense), written once and
// removed when the tests end.
const std::string& sign_checkpoint() {
  static const std::string dir = [] {
    const std::string out = temp_dir("sign");
    auto o = options("org.example.sign", {}, out);
    o.selection.include_keywords = {"mlp"};
    qforge::test::quantize(registry_with_sign(), o, "qforge");
    return out;
  }();
  return dir;
}

struct RemoveSignCheckpoint : ::testing::Environment {
  void TearDown() override { fs::remove_all(temp_dir("sign")); }
};
[[maybe_unused]] const auto* const kRemoveSignCheckpoint =
    ::testing::AddGlobalTestEnvironment(new RemoveSignCheckpoint);

TEST(NativeThirdParty, AFormatTheHostDoesNotKnowRoundTripsThroughItsOwnLayer) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string& dir = sign_checkpoint();
  const std::string results = dir + "/quant_results.safetensors";
  expect_round_trip(registry_with_sign(), dir, results);
  const qh::TensorStore store(dir);
  EXPECT_EQ(store.view("model.layers.2.mlp.up_proj.signs").scalar_type(), at::kByte);
  EXPECT_EQ(store.view("model.layers.2.mlp.up_proj.scale").scalar_type(), at::kFloat);
  EXPECT_EQ(store.view("model.layers.2.self_attn.q_proj.weight").scalar_type(), at::kHalf);
  const json q = read_json(fs::path(dir) / "config.json").at("quantization_config");
  EXPECT_EQ(q.at("layers").size(), 15u);  // 5 blocks x gate/up/down
  EXPECT_EQ(q.at("layers").at("model.layers.0.mlp.down_proj").at("metadata").at("packing"),
            json({{"bits", 1}, {"order", "lsb-first"}}));
}

// A one-line UsageError whose message contains `want`.
void expect_refused(const std::function<void()>& f, const std::string& want) {
  try {
    f();
    ADD_FAILURE() << "accepted; expected a refusal naming '" << want << "'";
  } catch (const qh::UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(want), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
  }
}

TEST(NativeThirdParty, WithoutItsInferenceLayerTheCheckpointIsRefusedNamingTheFormat) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string& dir = sign_checkpoint();
  expect_refused([&] { qh::load_model(in_tree_registry(), dir, at::kFloat); }, kSignFormat);
  expect_refused([&] { qh::load_model(in_tree_registry(), dir, at::kFloat); },
                 "layer model.layers.0.mlp.");
}

TEST(NativeReader, RefusesTamperedQuantizationConfigs) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string dir = temp_dir("tampered");
  fs::copy(sign_checkpoint(), dir);
  const json good = read_json(fs::path(dir) / "config.json");
  const std::string up = "model.layers.1.mlp.up_proj";
  auto tampered = [&](const std::function<void(json&)>& edit, const std::string& want) {
    json c = good;
    edit(c.at("quantization_config"));
    write_text(fs::path(dir) / "config.json", c.dump(2));
    SCOPED_TRACE(want);
    expect_refused([&] { qh::load_model(registry_with_sign(), dir, at::kFloat); }, want);
  };
  auto layer = [&](json& q) -> json& { return q.at("layers").at(up); };
  tampered([&](json& q) { layer(q)["tensors"] = {"signs", "scale", "zeros"}; },
           "has no " + up + ".zeros");
  tampered([&](json& q) { layer(q)["tensors"] = {"signs"}; }, "scale");  // the layer's own check
  tampered([&](json& q) { layer(q)["tensors"] = "signs"; }, "\"tensors\" must be");
  tampered([&](json& q) { layer(q)["tensors"] = {"signs", 7}; }, "\"tensors\" must hold strings");
  tampered([&](json& q) { layer(q)["tensors"] = {"signs", "signs"}; }, "twice");
  tampered([&](json& q) { layer(q)["tensors"] = {"signs", "../scale"}; }, "'../scale'");
  tampered([&](json& q) { layer(q).erase("tensors"); }, "\"tensors\" must be");
  tampered([&](json& q) { layer(q)["format"] = 5; }, "\"format\" must be");
  tampered([&](json& q) { layer(q)["format"] = "org.nowhere/9"; }, "org.nowhere/9");
  tampered([&](json& q) { layer(q)["metadata"] = "{}"; }, "\"metadata\" must be a JSON object");
  tampered([&](json& q) { layer(q)["metadata"] = json::object(); }, up);  // the layer refuses it
  tampered([&](json& q) { layer(q) = json::array(); }, "must be a JSON object");
  tampered([&](json& q) { q["layers"]["model.layers.7.mlp.up_proj"] = layer(q); },
           "'model.layers.7.mlp.up_proj' is not a linear layer of this model");
  tampered([&](json& q) { q["layers"]["model.norm"] = layer(q); }, "'model.norm'");
  tampered([&](json& q) { q["layers"]["model.layers.1.self_attn.q_proj"] = layer(q); },
           "also has a dense model.layers.1.self_attn.q_proj.weight");
  tampered([&](json& q) { q["layers"] = json::array(); }, "\"layers\" must be a JSON object");
  tampered([&](json& q) { q["format_version"] = 2; }, "format_version 2");
  tampered([&](json& q) { q["format_version"] = "1"; }, "\"format_version\" must be an integer");
  // The untouched config still loads.
  write_text(fs::path(dir) / "config.json", good.dump(2));
  EXPECT_NO_THROW(qh::load_model(registry_with_sign(), dir, at::kFloat));
  fs::remove_all(dir);
}

qh::QuantResult result_with(const std::string& name, const at::Tensor& t,
                            const std::string& metadata = "{}") {
  qh::QuantResult r;
  r.format = "org.example.any/1";
  r.metadata = metadata;
  r.tensors[name] = t;
  return r;
}

TEST(NativeWriter, KeepsEveryDtypeAndRefusesWhatTheLayoutCannotHold) {
  auto f = qh::make_save_format("qforge");
  const std::string layer = "model.layers.0.mlp.up_proj";
  for (at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16, at::kDouble, at::kByte,
                               at::kChar, at::kShort, at::kInt, at::kLong, at::kBool}) {
    const at::Tensor t = at::arange(6, at::kFloat).div(7).reshape({2, 3}).to(dtype);
    const qh::NamedTensors out = f->packed_linear(layer, result_with("codes", t));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].first, layer + ".codes");
    EXPECT_TRUE(same_bytes(out[0].second, t)) << at::toString(dtype);
  }
  const at::Tensor t = at::zeros({2}, at::kInt);
  for (const char* bad : {"weight", "a.b", "", "../x", "sp ace", "x/y"})
    expect_refused([&] { f->packed_linear(layer, result_with(bad, t)); }, layer);
  expect_refused([&] { f->packed_linear(layer, result_with(std::string(65, 'n'), t)); },
                 "longer than 64");
  expect_refused([&] { f->packed_linear(layer, result_with("codes", t, "[1]")); },
                 "metadata is not a JSON object");
  qh::QuantResult none = result_with("codes", t);
  none.tensors.clear();
  expect_refused([&] { f->packed_linear(layer, none); }, "no packed tensor");
}

TEST(NativeWriter, RefusesATensorNamedLikeADenseOneBeforeTheShardIsWritten) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string out = temp_dir("clash");
  expect_refused(
      [&] {
        qforge::test::quantize(registry_with_sign(),
                               options("org.example.sign", {{"name_clash", "true"}}, out),
                               "qforge");
      },
      "tensor name 'weight'");
  EXPECT_FALSE(fs::exists(fs::path(out) / qh::CheckpointWriter::shard_name(0)));
  fs::remove_all(out);
}

// Forwards to a CheckpointWriter and stops the run (as a kill would) when
// block `stop` is about to be written.
class StopAt final : public qh::BlockSink {
 public:
  StopAt(qh::BlockSink& inner, size_t stop) : inner_(inner), stop_(stop) {}
  std::string name() const override { return inner_.name(); }
  void check_plan(const std::vector<std::string>& formats,
                  const std::vector<std::string>& selected) const override {
    inner_.check_plan(formats, selected);
  }
  std::vector<std::string> write_block(
      size_t i, const qh::Block& b,
      const std::map<std::string, const qh::QuantResult*>& results) override {
    if (i == stop_) throw std::runtime_error("stopped");
    return inner_.write_block(i, b, results);
  }
  void restore_block(size_t i,
                     const std::map<std::string, const qh::QuantResult*>& results) override {
    inner_.restore_block(i, results);
  }
  void finish(const std::vector<qh::LayerReport>& layers) override { inner_.finish(layers); }

 private:
  qh::BlockSink& inner_;
  size_t stop_;
};

TEST(NativeWriter, AResumedRunListsTheLayersOfTheBlocksItDidNotWrite) {
  QFORGE_REQUIRE_SHARED(model, "models/stories260K");
  const std::string full = temp_dir("full"), resumed = temp_dir("resumed");
  const qforge::test::Settings params = {{"bits", "3"}, {"group_size", "32"}};
  qforge::test::quantize(in_tree_registry(), options("org.qforge.rtn", params, full), "qforge");
  auto o = options("org.qforge.rtn", params, resumed);
  {
    qh::CheckpointWriter writer(qh::make_save_format("qforge"), o.model_dir, o.out_dir);
    StopAt stop(writer, 2);
    EXPECT_THROW(qh::quantize_model(in_tree_registry(), o, stop), std::runtime_error);
  }
  o.resume = true;
  qh::WriterOptions wo;
  wo.resume = true;
  qh::CheckpointWriter writer(qh::make_save_format("qforge"), o.model_dir, o.out_dir, wo);
  EXPECT_EQ(qh::quantize_model(in_tree_registry(), o, writer).resumed_from_block, 2);
  for (const char* f : {"config.json", "model-block-00000.safetensors",
                        "model-block-00004.safetensors", "model.safetensors.index.json"})
    EXPECT_EQ(qforge::test::read_bytes(fs::path(resumed) / f),
              qforge::test::read_bytes(fs::path(full) / f))
        << f;
  fs::remove_all(full);
  fs::remove_all(resumed);
}

}  // namespace
