// org.qforge.smoothquant through the host's pre-process services, on a real
// model's calibration activations: the block computes the same function,
// eq. (4) holds channel by channel (at α = 0.5 each channel's activation
// maximum equals its weight maximum afterwards), the architecture table's
// sources are the ones scaled (o_proj is left alone under grouped-query
// attention), and bad use is refused.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <string>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/capture.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/train/postprocess.hpp"
#include "support/plugins.hpp"
#include "support/preprocess.hpp"
#include "support/test_data.hpp"

namespace {

namespace host = qforge::host;

constexpr const char* kId = "org.qforge.smoothquant";

using qforge::test::inputs_of;
using qforge::test::load_block0;
using qforge::test::run_preprocess;
using qforge::test::stacked;


at::Tensor column_max(const at::Tensor& w) { return std::get<0>(w.abs().max(0)); }
at::Tensor channel_max(const at::Tensor& x) { return std::get<0>(x.abs().max(0)); }

const std::vector<std::string> kQkv = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
const std::vector<std::string> kGateUp = {"mlp.gate_proj", "mlp.up_proj"};

TEST(SmoothQuant, Eq4KeepsTheBlockAndBalancesEveryChannelAtAlphaOneHalf) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  auto f = load_block0(dir, calib);
  host::Block& b = f.model.blocks()[0];
  const at::Tensor before = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  const at::Tensor norm = b.input_norm.clone(), qkv = stacked(b, kQkv);
  const at::Tensor o = b.find("self_attn.o_proj")->weight.clone();
  const at::Tensor down = b.find("mlp.down_proj")->weight.clone();
  const at::Tensor x_max = channel_max(inputs_of(f.model, f.x, "model.layers.0.self_attn.q_proj"));
  run_preprocess(kId, f.model, f.x, {{"alpha", "0.5"}});

  // The function is unchanged (float32 rounding only).
  const at::Tensor after = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  EXPECT_LT((after - before).abs().max().item<double>(), 1e-4 * before.abs().max().item<double>());
  // s_j = max|X_j|^0.5 / max|W_j|^0.5 (W over q, k and v), computed here from
  // the captured activations: the norm is divided by it, the columns multiplied.
  const at::Tensor s = (x_max / column_max(qkv)).sqrt();
  EXPECT_TRUE(at::allclose(norm / b.input_norm, s, 1e-4, 0));
  EXPECT_TRUE(at::allclose(stacked(b, kQkv), qkv * s.unsqueeze(0), 1e-5, 1e-7));
  // Hence, afterwards, max|X'_j| = max|W'_j| in every channel, for both groups.
  for (auto [probe, names] : {std::pair{"model.layers.0.self_attn.q_proj", kQkv},
                              std::pair{"model.layers.0.mlp.gate_proj", kGateUp}})
    EXPECT_TRUE(at::allclose(channel_max(inputs_of(f.model, f.x, probe)),
                             column_max(stacked(b, names)), 1e-4, 1e-6))
        << probe;
  EXPECT_GT((s - 1).abs().max().item<double>(), 0.1);  // it did move something
  // Norms only by default.
  EXPECT_TRUE(at::equal(b.find("self_attn.o_proj")->weight, o));
  EXPECT_TRUE(at::equal(b.find("mlp.down_proj")->weight, down));
}

TEST(SmoothQuant, LinearSourcesScaleUpIntoDownButNotVIntoOUnderGroupedQueryAttention) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  auto f = load_block0(dir, calib);  // 8 heads, 4 key-value heads: v_proj has half o_proj's inputs
  host::Block& b = f.model.blocks()[0];
  const at::Tensor before = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  const at::Tensor o = b.find("self_attn.o_proj")->weight.clone();
  const at::Tensor up = b.find("mlp.up_proj")->weight.clone(), down = b.find("mlp.down_proj")->weight.clone();
  const at::Tensor x_down = channel_max(inputs_of(f.model, f.x, "model.layers.0.mlp.down_proj"));
  run_preprocess(kId, f.model, f.x, {{"alpha", "0.8"}, {"linear_sources", "true"}});

  const at::Tensor after = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  EXPECT_LT((after - before).abs().max().item<double>(), 1e-4 * before.abs().max().item<double>());
  EXPECT_TRUE(at::equal(b.find("self_attn.o_proj")->weight, o));
  // up → down at α = 0.8: up's rows over s, down's columns times s. (up's
  // columns were first scaled by the post-attention norm's s, so compare rows
  // through down, which has no other source.)
  const at::Tensor s = x_down.pow(0.8) / column_max(down).pow(0.2);
  EXPECT_TRUE(at::allclose(b.find("mlp.down_proj")->weight, down * s.unsqueeze(0), 1e-5, 1e-7));
  EXPECT_FALSE(at::allclose(b.find("mlp.up_proj")->weight, up));
}

TEST(SmoothQuant, StatisticsAreRefusedOutsideThePipeline) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  qforge::test::expect_refused_without_statistics(kId, dir);
  const host::Component* c = qforge::test::plugin_registry().find(kId);
  ASSERT_NE(c, nullptr);
  EXPECT_THROW(host::ParamValues(kId, c->desc->params, c->desc->param_count, {{"alpha", "1.5"}}),
               host::UsageError);
}

}  // namespace
