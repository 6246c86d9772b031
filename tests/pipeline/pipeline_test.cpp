// The block-sequential pipeline on stories260K: QEP lowers the last block's
// output error, chunking changes nothing, saved results re-apply exactly.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "../support/test_data.hpp"
#include "../support/pipeline.hpp"
#include "../support/plugins.hpp"
#include "qforge_host/pipeline/metrics.hpp"
#include "qforge_host/pipeline/qep.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;

namespace {

std::string temp_dir(const std::string& name) {
  return qforge::test::temp_path("qforge_pipeline", name);
}

qh::Registry& registry() { return qforge::test::plugin_registry(); }

qh::QuantizeOptions rtn_options(const std::string& shared, const std::string& out) {
  qh::QuantizeOptions o;
  o.model_dir = shared + "/models/stories260K";
  o.out_dir = out;
  o.method = "org.qforge.rtn";
  o.params = {{"bits", "3"}, {"group_size", "-1"}};
  o.calibration.file = shared + "/data/tinystories_v2_calib.txt";
  o.calibration.nsamples = 12;
  o.calibration.seqlen = 256;
  o.calibration.seed = 3;
  return o;
}

// Hidden states after the last block, for the calibration sequences.
at::Tensor last_block_output(const std::string& dir, const at::Tensor& ids) {
  qh::Model m = qh::Model::load(dir, at::kFloat);
  at::Tensor h = m.embed(ids);
  for (size_t i = 0; i < m.blocks().size(); ++i) h = m.block_forward(i, h, 0, nullptr);
  return h;
}

std::string bytes(const fs::path& p) { return qforge::test::read_bytes(p); }

}  // namespace

TEST(Pipeline, QepLowersTheLastBlockOutputError) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  std::string shared = qforge::test::shared_dir();
  auto plain = rtn_options(shared, temp_dir("plain"));
  auto qep = rtn_options(shared, temp_dir("qep"));
  qep.qep = true;
  qforge::test::quantize(registry(), plain);
  qforge::test::quantize(registry(), qep);

  auto tok = qh::load_tokenizer(plain.model_dir);
  at::Tensor ids = qh::load_calibration(*tok, plain.calibration).ids;
  at::Tensor ref = last_block_output(plain.model_dir, ids);
  auto rel = [&](const std::string& dir) {
    at::Tensor d = last_block_output(dir, ids) - ref;
    return (d.pow(2).sum() / ref.pow(2).sum()).item<double>();
  };
  double e_plain = rel(plain.out_dir), e_qep = rel(qep.out_dir);
  RecordProperty("relative_error_rtn", std::to_string(e_plain));
  RecordProperty("relative_error_rtn_qep", std::to_string(e_qep));
  std::cout << "last block relative squared error: RTN " << e_plain << ", RTN+QEP " << e_qep << "\n";
  EXPECT_GT(e_plain, 0);
  EXPECT_LT(e_qep, e_plain);
  fs::remove_all(plain.out_dir);
  fs::remove_all(qep.out_dir);
}

TEST(Pipeline, ResultsDoNotDependOnTheChunkSize) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  std::string shared = qforge::test::shared_dir();
  auto a = rtn_options(shared, temp_dir("chunk1"));
  auto b = rtn_options(shared, temp_dir("chunk5"));
  a.chunk = 1;
  b.chunk = 5;
  a.qep = b.qep = true;  // the Hessian and the QEP cross term both see the chunking
  qforge::test::quantize(registry(), a);
  qforge::test::quantize(registry(), b);
  auto ra = qh::load_results(a.out_dir + "/quant_results.safetensors");
  auto rb = qh::load_results(b.out_dir + "/quant_results.safetensors");
  ASSERT_EQ(ra.size(), rb.size());
  for (size_t k = 0; k < ra.size(); ++k) {
    SCOPED_TRACE(ra[k].report.name);
    for (const auto& [name, t] : ra[k].result.tensors) {
      EXPECT_TRUE(at::equal(t, rb[k].result.tensors.at(name))) << name;
    }
    EXPECT_NEAR(ra[k].report.metrics.at("output_squared_error"),
                rb[k].report.metrics.at("output_squared_error"),
                1e-9 * ra[k].report.metrics.at("output_squared_error"));
  }
  fs::remove_all(a.out_dir);
  fs::remove_all(b.out_dir);
}

TEST(Pipeline, SavedResultsReapplyWithoutQuantizing) {
  QFORGE_REQUIRE_SHARED(shared_model, "models/stories260K");
  std::string shared = qforge::test::shared_dir();
  auto o = rtn_options(shared, temp_dir("apply_src"));
  o.selection.exclude_keywords = {"k_proj"};
  o.overrides = {{"*down_proj", {{"bits", "8"}}}};
  auto summary = qforge::test::quantize(registry(), o);
  for (const auto& l : summary.layers) {
    EXPECT_EQ(l.name.find("k_proj"), std::string::npos) << "excluded layer quantized";
    if (l.name.find("down_proj") != std::string::npos) {
      EXPECT_NE(l.metadata.find("\"bits\":8"), std::string::npos) << l.metadata;
    }
    for (const char* m : {"output_squared_error", "mean_output_squared_error", "weight_squared_error",
                          "mean_weight_squared_error", "relative_output_error",
                          "relative_weight_error", "seconds"})
      EXPECT_TRUE(l.metrics.count(m)) << m;
  }
  std::string again = temp_dir("apply_dst");
  qforge::test::apply(registry(), o.model_dir, summary.results_file, again);
  for (const auto& entry : fs::directory_iterator(o.out_dir)) {
    std::string name = entry.path().filename().string();
    if (name.rfind("model-", 0) == 0) {
      EXPECT_EQ(bytes(entry.path()), bytes(fs::path(again) / name)) << name;
    }
  }
  EXPECT_THROW(qforge::test::apply(registry(), o.model_dir, summary.results_file, again),
               qh::UsageError);  // refuses to overwrite a model
  fs::remove_all(o.out_dir);
  fs::remove_all(again);
}

TEST(Pipeline, ErrorMetricsOnAKnownCase) {
  at::Tensor w = at::tensor({1.0, 2.0, 3.0, 4.0}, at::kDouble).view({2, 2});
  at::Tensor w_hat = w.clone();
  w_hat[0][0] = 0.0;  // ΔW = [[1, 0], [0, 0]]
  at::Tensor gram = at::tensor({2.0, 1.0, 1.0, 3.0}, at::kDouble).view({2, 2});
  auto m = qh::error_metrics(w, w_hat, gram * (2.0 / 10), 10);  // H = 2/n XᵀX
  EXPECT_NEAR(m["output_squared_error"], 2.0, 1e-6);  // ΔW XᵀX ΔWᵀ = G[0][0]
  EXPECT_NEAR(m["mean_output_squared_error"], 2.0 / 20, 1e-7);
  EXPECT_DOUBLE_EQ(m["weight_squared_error"], 1.0);
  EXPECT_DOUBLE_EQ(m["mean_weight_squared_error"], 0.25);
  EXPECT_DOUBLE_EQ(m["relative_weight_error"], 1.0 / 30);
}

TEST(Pipeline, QepCorrectionSolvesTheLeastSquaresProblem) {
  // With α = 1 and no damping, W* minimises ||X̃Wᵀ − XW*ᵀ||: W* = W X̃ᵀX (XᵀX)⁻¹.
  at::manual_seed(0);
  at::Tensor x = at::randn({200, 6}, at::kDouble), x_fp = x + 0.1 * at::randn({200, 6}, at::kDouble);
  at::Tensor w = at::randn({4, 6}, at::kDouble);
  at::Tensor gram = at::matmul(x.t(), x), delta = at::matmul((x_fp - x).t(), x);
  at::Tensor got = qh::qep_correct(w, gram, delta, 0.0, 1.0);
  at::Tensor scaled = qh::qep_correct(w, gram * 0.01, delta * 0.01, 0.0, 1.0);
  EXPECT_LT((got - scaled).abs().max().item<double>(), 1e-9);
  at::Tensor want = at::matmul(at::matmul(w, at::matmul(x_fp.t(), x)), at::inverse(gram));
  EXPECT_LT((got - want).abs().max().item<double>(), 1e-9);
}
