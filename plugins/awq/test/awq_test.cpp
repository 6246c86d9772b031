// org.qforge.awq through the host's pre-process services, on a real model's
// calibration activations: input_gram is the inputs' second moment; the
// chosen scales are the best of eq. (5)'s grid for eq. (4)'s error, both
// recomputed here from the captured activations; the block computes the same
// function; o_proj is left alone under grouped-query attention; the error
// after scaling is below plain round-to-nearest's; bad use is refused.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <qforge/cpp/grid.hpp>

#include <limits>
#include <string>
#include <vector>

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

constexpr const char* kId = "org.qforge.awq";

using qforge::test::inputs_of;
using qforge::test::load_block0;
using qforge::test::run_preprocess;
using qforge::test::stacked;


// Round to nearest, 3 bits, groups of 32, asymmetric: the grid of the run below.
at::Tensor rtn(const at::Tensor& w) {
  qforge::grid::Spec spec;
  spec.bits = 3;
  spec.sym = false;
  const at::Tensor x = w.contiguous();
  at::Tensor q = at::empty_like(x);
  for (int64_t r = 0; r < x.size(0); ++r)
    qforge::grid::round_row(x[r].data_ptr<float>(), x.size(1), 32, spec, q[r].data_ptr<float>());
  return q;
}

// Eq. (4) on the activations themselves: mean over tokens of |ΔW x|², per
// output row, ΔW = Q(W·s)/s − W.
double output_error(const at::Tensor& w, const at::Tensor& s, const at::Tensor& x) {
  const at::Tensor sf = s.to(at::kFloat).unsqueeze(0);
  const at::Tensor dw = (rtn(w * sf) / sf - w).to(at::kDouble);
  return x.to(at::kDouble).matmul(dw.t()).pow(2).sum().item<double>() /
         static_cast<double>(x.size(0) * w.size(0));
}

// Eq. (5)'s duo grid as the research notes give llm-compressor's: the
// identity, then x̄^a / (w̄^(1−a) + 1e-4) for a = k/18, clamped at 1e-4 and
// normalised by sqrt(max · min).
std::vector<at::Tensor> grid_of(const at::Tensor& x, const at::Tensor& w) {
  const at::Tensor x_mean = x.abs().to(at::kDouble).mean(0);
  at::Tensor wn = w.abs().to(at::kDouble).reshape({w.size(0), -1, 32});
  wn = (wn / std::get<0>(wn.max(2, true))).reshape({w.size(0), w.size(1)}).mean(0);
  std::vector<at::Tensor> out = {at::ones_like(x_mean)};
  for (int k = 0; k <= 18; ++k) {
    const double a = k / 18.0;
    at::Tensor s = (x_mean.pow(a) / (wn.pow(1 - a) + 1e-4)).clamp_min(1e-4);
    out.push_back(s / (s.max() * s.min()).sqrt());
  }
  return out;
}

const std::vector<std::string> kQkv = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
const std::map<std::string, std::string> kGrid = {
    {"bits", "3"}, {"group_size", "32"}, {"sym", "false"}, {"linear_sources", "true"}};

TEST(Awq, InputGramIsTheInputsSecondMoment) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  auto f = load_block0(dir, calib);
  const host::BlockScope scope = host::preprocess_scope(f.model, 0, f.x, 4);
  for (const char* probe : {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"}) {
    const at::Tensor x = inputs_of(f.model, f.x, probe).to(at::kDouble);
    const at::Tensor want = x.t().matmul(x) / static_cast<double>(x.size(0));
    const at::Tensor got = scope.input_gram(probe).to(at::kDouble);
    EXPECT_TRUE(at::allclose(got, want, 1e-4, 1e-4 * want.abs().max().item<double>())) << probe;
  }
}

TEST(Awq, PicksTheBestScalesOfTheGridAndKeepsTheBlock) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  QFORGE_REQUIRE_SHARED(calib, "data/tinystories_v2_calib.txt");
  auto f = load_block0(dir, calib);
  host::Block& b = f.model.blocks()[0];
  const at::Tensor before = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  const at::Tensor norm = b.input_norm.clone(), qkv = stacked(b, kQkv);
  const at::Tensor o = b.find("self_attn.o_proj")->weight.clone();
  const at::Tensor down = b.find("mlp.down_proj")->weight.clone();
  const at::Tensor x = inputs_of(f.model, f.x, "model.layers.0.self_attn.q_proj");
  run_preprocess(kId, f.model, f.x, kGrid);

  // The function is unchanged (float32 rounding only).
  const at::Tensor after = f.model.block_forward(0, f.x, 0, nullptr, nullptr);
  EXPECT_LT((after - before).abs().max().item<double>(), 1e-4 * before.abs().max().item<double>());
  // The scale AWQ folded into input_layernorm is the candidate of least
  // output error, and that error is below round-to-nearest's.
  const at::Tensor s = (norm.to(at::kDouble) / b.input_norm.to(at::kDouble));
  const std::vector<at::Tensor> grid = grid_of(x, qkv);
  size_t best = 0;
  double best_error = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < grid.size(); ++k) {
    const double e = output_error(qkv, grid[k], x);
    if (e < best_error) {
      best_error = e;
      best = k;
    }
  }
  EXPECT_NE(best, 0u) << "plain round-to-nearest was best: the test shows nothing";
  EXPECT_TRUE(at::allclose(s, grid[best], 1e-4, 0)) << "picked another candidate than " << best;
  EXPECT_LT(output_error(qkv, s, x), 0.95 * output_error(qkv, grid[0], x));
  EXPECT_TRUE(at::allclose(stacked(b, kQkv), qkv * s.to(at::kFloat).unsqueeze(0), 1e-5, 1e-7));
  // 8 heads over 4 key-value heads: v_proj's rows can't scale o_proj's inputs.
  EXPECT_TRUE(at::equal(b.find("self_attn.o_proj")->weight, o));
  // up_proj → down_proj is a mapping: down_proj's columns moved.
  EXPECT_FALSE(at::equal(b.find("mlp.down_proj")->weight, down));
}

TEST(Awq, StatisticsAreRefusedOutsideThePipeline) {
  QFORGE_REQUIRE_SHARED(dir, "models/stories260K");
  qforge::test::expect_refused_without_statistics(kId, dir);
  const host::Component* c = qforge::test::plugin_registry().find(kId);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->desc->min_host_minor, 3u);  // it calls input_gram
  EXPECT_THROW(host::ParamValues(kId, c->desc->params, c->desc->param_count, {{"bits", "9"}}),
               host::UsageError);
}

}  // namespace
