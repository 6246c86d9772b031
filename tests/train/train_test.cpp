// Training through the host (qforge.host.train) on stories260K with packed
// RTN and GPTQ layers and the LoRA plugin's adapters:
//  - each packed layer + adapter: gradients equal LibTorch autograd on the
//    dequantized weight, computed in double precision;
//  - the whole model: the trainer's adapter gradients equal plain autograd on
//    a dense copy (dequantized weights, the adapters as LibTorch ops);
//  - the PEFT adapter written to disk, read back by a reader written here
//    from PEFT's conventions, gives the logits of qforge's --adapter path.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "../support/plugins.hpp"
#include "../support/test_data.hpp"
#include "internal.hpp"
#include "qforge_host/data/calibration.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/plugins/services.hpp"
#include "qforge_host/save/peft.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/train/postprocess.hpp"

namespace fs = std::filesystem;
namespace qh = qforge::host;
using nlohmann::json;

namespace {

qh::Registry& registry() { return qforge::test::plugin_registry(); }

// Blocks 0 and 1 packed: RTN and GPTQ (act-order, asymmetric) alternating,
// 3 bits, groups of 32; GPTQ's Hessian from seeded inputs.
std::map<std::string, qh::QuantResult>& packed_results() {
  static std::map<std::string, qh::QuantResult> results;
  return results;
}

void pack_first_blocks(qh::Model& m) {
  const qh::Component* rtn = registry().find("org.qforge.rtn");
  const qh::Component* gptq = registry().find("org.qforge.gptq");
  ASSERT_TRUE(rtn && gptq) << qforge::test::plugin_refusals();
  int k = 0;
  for (int b = 0; b < 2; ++b)
    for (qh::Linear* l : m.blocks()[b].linears()) {
      const at::Tensor w = l->weight.to(at::kFloat);
      at::Tensor x = at::randn({256, w.size(1)}, at::TensorOptions().dtype(at::kFloat));
      at::Tensor h = x.t().mm(x) * (2.0 / 256);
      qh::QuantResult r =
          (k++ % 2 == 0)
              ? qforge::test::quantize(*rtn, w, at::Tensor(), {{"bits", "3"}, {"group_size", "32"}})
              : qforge::test::quantize(*gptq, w, h,
                                       {{"bits", "3"}, {"group_size", "32"}, {"sym", "false"},
                                        {"desc_act", "true"}});
      packed_results()[l->name] = r;
      const qh::Component* layer = registry().find_inference_layer(r.format);
      ASSERT_NE(layer, nullptr) << r.format;
      l->packed = std::make_shared<qh::PackedLayer>(*layer, r);
      l->weight = at::Tensor();
    }
}

// LoRA as plain LibTorch ops (the reference): y = s·(x·Aᵀ)·Bᵀ.
struct RefLora final : qh::LinearAdapter {
  at::Tensor A, B;
  double s;
  at::Tensor forward(const at::Tensor& x) const override {
    return at::matmul(at::matmul(x, A.t()), B.t()) * s;
  }
};

// A trainer on the first 64 tokens of the training text, AdamW at `lr`.
qforge_train_config one_sequence_config(double lr) {
  qforge_train_config cfg{};
  cfg.struct_size = sizeof cfg;
  cfg.max_length = 64;
  cfg.max_samples = 1;
  cfg.batch_size = 1;
  cfg.lr = lr;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.999;
  cfg.eps = 1e-8;
  return cfg;
}

double rel_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>() /
         std::max(1e-30, b.to(at::kDouble).abs().max().item<double>());
}

class Training : public ::testing::Test {
 protected:
  void SetUp() override {
    at::manual_seed(5);
    model_dir_ = qforge::test::shared_dir() + "/models/stories260K";
    data_ = qforge::test::shared_dir() + "/data/tinystories_v2_calib.txt";
    if (!fs::exists(model_dir_) || !fs::exists(data_)) {
      if (qforge::test::in_ci()) FAIL() << "shared test data missing (CI=true)";
      GTEST_SKIP() << "shared test data missing";
    }
    model_ = std::make_unique<qh::Model>(qh::Model::load(model_dir_, at::kFloat));
    pack_first_blocks(*model_);
    tok_ = qh::load_tokenizer(model_dir_);
    ctx_.tokenizer = tok_.get();
    ctx_.data.file = data_;
    services_ = std::make_unique<qh::ModelServices>(*model_, ctx_);
    // Two updates of LoRA SFT without dropout: B is no longer 0.
    const qh::Component* lora = registry().find("org.qforge.lora.sft");
    ASSERT_NE(lora, nullptr) << qforge::test::plugin_refusals();
    qh::ParamValues params(lora->desc->id, lora->desc->params, lora->desc->param_count,
                           {{"lora_dropout", "0"}, {"epochs", "2"}, {"max_train_samples", "1"},
                            {"max_length", "64"}, {"lr", "0.01"}, {"lora_r", "4"}});
    qh::run_postprocess(*lora, params, *services_);
    ASSERT_EQ(services_->impl().adapters.size(), 35u);
  }
  std::string model_dir_, data_;
  std::unique_ptr<qh::Model> model_;
  std::unique_ptr<qh::Tokenizer> tok_;
  qh::PostprocessContext ctx_;
  std::unique_ptr<qh::ModelServices> services_;
};

TEST_F(Training, PackedLayerAndAdapterGradientsEqualDoubleAutograd) {
  int checked = 0;
  for (qh::Linear* l : model_->blocks()[0].linears()) {
    auto& adapter = *services_->impl().adapters.at(l->name);
    auto& params = adapter.params();
    ASSERT_EQ(params.size(), 2u);
    const at::Tensor A = params[0].value, B = params[1].value;
    ASSERT_GT(B.abs().max().item<double>(), 0.0) << "B was not trained";
    const double s = 32.0 / 4;
    const int64_t in = A.size(1), out = B.size(0);
    at::Tensor x = at::randn({2, 3, in}, at::kDouble);
    at::Tensor R = at::randn({2, 3, out}, at::kDouble);

    // Ours: float32, through the packed layer's backward_input and the
    // adapter's backward.
    for (auto& p : params) p.grad.zero_();
    at::Tensor x32 = x.to(at::kFloat).set_requires_grad(true);
    {
      at::AutoGradMode grad(true);
      (l->forward(x32) * R.to(at::kFloat)).sum().backward();
    }
    // Reference: double-precision autograd on the dequantized weight.
    at::Tensor W = l->packed->dequantize().to(at::kDouble);
    at::Tensor xd = x.clone().set_requires_grad(true);
    at::Tensor Ad = A.to(at::kDouble).set_requires_grad(true);
    at::Tensor Bd = B.to(at::kDouble).set_requires_grad(true);
    {
      at::AutoGradMode grad(true);
      at::Tensor y = at::matmul(xd, W.t()) + at::matmul(at::matmul(xd, Ad.t()), Bd.t()) * s;
      (y * R).sum().backward();
    }
    EXPECT_LT(rel_diff(x32.grad(), xd.grad()), 2e-5) << l->name << " dL/dx";
    EXPECT_LT(rel_diff(params[0].grad, Ad.grad()), 2e-5) << l->name << " dL/dA";
    EXPECT_LT(rel_diff(params[1].grad, Bd.grad()), 2e-5) << l->name << " dL/dB";
    ++checked;
  }
  EXPECT_EQ(checked, 7);
}

TEST_F(Training, TrainerGradientsEqualAutogradOnTheDequantizedModel) {
  // The trainer's gradients for one micro-batch of cross-entropy.
  const qforge_host_train* t = qh::host_train_table();
  const qforge_train_config cfg = one_sequence_config(0.0);
  qforge_trainer* trainer = nullptr;
  qh::throw_if_error(t->trainer_create(services_->table(), &cfg, &trainer), "trainer_create");
  for (auto& [name, a] : services_->impl().adapters)
    for (auto& p : a->params()) p.grad.zero_();
  qforge_loss_term ce{sizeof(qforge_loss_term), QFORGE_LOSS_CROSS_ENTROPY, 1.0, 1.0, nullptr, 0, 0};
  const qforge_loss_term* terms[] = {&ce};
  double value = 0;
  qh::throw_if_error(t->loss_backward(trainer, 0, 0, terms, 1, 1.0, &value), "loss_backward");
  t->trainer_destroy(trainer);

  // The reference: a dense copy (dequantized weights) with the adapters as
  // LibTorch ops, differentiated by plain autograd.
  qh::Model ref = qh::Model::load(model_dir_, at::kFloat);
  std::map<std::string, std::shared_ptr<RefLora>> refs;
  for (size_t b = 0; b < ref.blocks().size(); ++b) {
    auto ours = model_->blocks()[b].linears();
    auto theirs = ref.blocks()[b].linears();
    for (size_t i = 0; i < ours.size(); ++i) {
      if (ours[i]->packed) theirs[i]->weight = ours[i]->packed->dequantize();
      auto& params = services_->impl().adapters.at(ours[i]->name)->params();
      auto r = std::make_shared<RefLora>();
      r->A = params[0].value.clone().set_requires_grad(true);
      r->B = params[1].value.clone().set_requires_grad(true);
      r->s = 32.0 / 4;
      theirs[i]->adapter = r;
      refs[ours[i]->name] = r;
    }
  }
  qh::CalibrationOptions o;
  o.file = data_;
  qh::TrainingSequences seq = qh::load_training_sequences(*tok_, o, 64, 1);
  double ref_value = 0;
  {
    at::AutoGradMode grad(true);
    at::Tensor z = ref.forward(seq.ids);  // [1, T, V]
    const int64_t T = z.size(1);
    at::Tensor loss = at::cross_entropy_loss(z.narrow(1, 0, T - 1).reshape({-1, z.size(2)}),
                                             seq.labels.narrow(1, 1, T - 1).reshape({-1}));
    ref_value = loss.item<double>();
    loss.backward();
  }
  EXPECT_NEAR(value, ref_value, 1e-5 * std::abs(ref_value));
  for (auto& [name, r] : refs) {
    auto& params = services_->impl().adapters.at(name)->params();
    EXPECT_LT(rel_diff(params[0].grad, r->A.grad()), 1e-4) << name << " dL/dA";
    EXPECT_LT(rel_diff(params[1].grad, r->B.grad()), 1e-4) << name << " dL/dB";
  }
}

// The affine layer's tunable scales s and zero points z (qforge.layer.tunable):
// with the codes q fixed, W = s[g(i), o]·(q − z[g(i), o]); the gradients the
// layer accumulates equal double-precision autograd through that expression,
// for RTN (groups of 32) and GPTQ (act-order g_idx) layers; after an update
// in place the layer computes with the new parameters.
TEST_F(Training, TunableScalesAndZeroPointsGradientsEqualDoubleAutograd) {
  int checked = 0;
  auto& s = services_->impl();
  for (size_t k = 0; k < 7; ++k) {
    qh::Linear* l = model_->blocks()[0].linears()[k];
    auto& params = s.packed[k]->tune(l->name);
    ASSERT_EQ(params.size(), 2u);
    const at::Tensor S0 = params[0].value.clone(), Z0 = params[1].value.clone();
    const int64_t out = S0.size(1);
    const qh::QuantResult& r = packed_results().at(l->name);
    const int64_t in = l->packed->in_features();
    at::Tensor gidx = r.tensors.count("g_idx") ? r.tensors.at("g_idx").to(at::kLong)
                                                : at::arange(in, at::kLong).div(32, "floor");
    ASSERT_EQ(gidx.size(0), in);
    // The codes, from W and the parameters it was made with.
    const at::Tensor W0 = l->packed->dequantize().to(at::kDouble);
    const at::Tensor Sg = S0.to(at::kDouble).index_select(0, gidx).t(), Zg = Z0.to(at::kDouble).index_select(0, gidx).t();
    const at::Tensor q = (W0 / Sg + Zg).round();
    ASSERT_TRUE(at::allclose(Sg * (q - Zg), W0, 1e-6, 1e-7)) << l->name;

    at::Tensor x = at::randn({2, 5, in}, at::kDouble), R = at::randn({2, 5, out}, at::kDouble);
    for (auto& p : params) p.grad.zero_();
    {
      at::AutoGradMode grad(true);
      (l->forward(x.to(at::kFloat)) * R.to(at::kFloat)).sum().backward();
    }
    at::Tensor sd = S0.to(at::kDouble).set_requires_grad(true), zd = Z0.to(at::kDouble).set_requires_grad(true);
    {
      at::AutoGradMode grad(true);
      at::Tensor W = sd.index_select(0, gidx).t() * (q - zd.index_select(0, gidx).t());
      (at::matmul(x, W.t()) * R).sum().backward();
    }
    EXPECT_LT(rel_diff(params[0].grad, sd.grad()), 2e-5) << l->name << " dL/ds";
    EXPECT_LT(rel_diff(params[1].grad, zd.grad()), 2e-5) << l->name << " dL/dz";

    // An update in place: the layer computes with the new parameters.
    params[0].value.mul_(1.25);
    params[1].value.add_(0.5);
    s.packed[k]->update();
    const at::Tensor W1 = (params[0].value.to(at::kDouble).index_select(0, gidx).t() *
                           (q - params[1].value.to(at::kDouble).index_select(0, gidx).t()));
    EXPECT_LT(rel_diff(l->packed->dequantize(), W1), 1e-6) << l->name;
    ++checked;
  }
  EXPECT_EQ(checked, 7);
}

// The trainer tunes the scales and zero points of block 0's packed layers
// (tune_layer): a few AdamW steps on one batch lower its loss, the layers
// stay packed, and a dense layer or a missing one is refused.
TEST_F(Training, TrainerTunesScalesAndZeroPointsOfPackedLayers) {
  const qforge_host_train* t = qh::host_train_table();
  const qforge_train_config cfg = one_sequence_config(1e-3);
  qforge_trainer* trainer = nullptr;
  qh::throw_if_error(t->trainer_create(services_->table(), &cfg, &trainer), "trainer_create");
  for (qh::Linear* l : model_->blocks()[0].linears())
    qh::throw_if_error(t->tune_layer(trainer, l->name.c_str()), "tune_layer");
  EXPECT_THROW(qh::throw_if_error(t->tune_layer(trainer, "model.layers.3.mlp.up_proj"), ""),
               qh::PluginError);  // dense: nothing to tune
  EXPECT_THROW(qh::throw_if_error(t->tune_layer(trainer, "no.such.layer"), ""), qh::PluginError);
  const at::Tensor before = model_->blocks()[0].q_proj.packed->dequantize();
  qforge_loss_term ce{sizeof(qforge_loss_term), QFORGE_LOSS_CROSS_ENTROPY, 1.0, 1.0, nullptr, 0, 0};
  const qforge_loss_term* terms[] = {&ce};
  std::vector<double> losses;
  for (int k = 0; k < 6; ++k) {
    double value = 0;
    qh::throw_if_error(t->loss_backward(trainer, 0, 0, terms, 1, 1.0, &value), "loss_backward");
    qh::throw_if_error(t->step(trainer, nullptr), "step");
    losses.push_back(value);
  }
  t->trainer_destroy(trainer);
  EXPECT_LT(losses.back(), losses.front());
  EXPECT_NE(model_->blocks()[0].q_proj.packed->format_id(), "");  // still packed
  EXPECT_GT((model_->blocks()[0].q_proj.packed->dequantize() - before).abs().max().item<double>(), 0.0);
}

// A reader of PEFT LoRA adapters written from PEFT's conventions alone:
// adapter_config.json's r and lora_alpha give s = alpha / r;
// "base_model.model.<module>.lora_A.weight" is [r, in], lora_B [out, r];
// the module's weight becomes W + s·B·A.
std::map<std::string, at::Tensor> read_peft_deltas(const fs::path& dir) {
  std::ifstream f(dir / "adapter_config.json");
  json c = json::parse(f);
  EXPECT_EQ(c["peft_type"], "LORA");
  const double s = c["lora_alpha"].get<double>() / c["r"].get<double>();
  qh::SafetensorsFile st((dir / "adapter_model.safetensors").string());
  std::map<std::string, at::Tensor> deltas;
  const std::string prefix = "base_model.model.", a_suffix = ".lora_A.weight";
  for (const auto& [name, info] : st.tensors()) {
    if (name.size() < a_suffix.size() || name.compare(name.size() - a_suffix.size(), a_suffix.size(), a_suffix) != 0)
      continue;
    const std::string module = name.substr(prefix.size(), name.size() - prefix.size() - a_suffix.size());
    at::Tensor A = st.load(name, at::kFloat);
    at::Tensor B = st.load(prefix + module + ".lora_B.weight", at::kFloat);
    EXPECT_EQ(A.size(0), c["r"].get<int64_t>());
    EXPECT_EQ(B.size(1), c["r"].get<int64_t>());
    deltas[module] = at::matmul(B, A) * s;
  }
  return deltas;
}

TEST_F(Training, PeftAdapterReadByItsConventionsGivesTheAdapterPathsLogits) {
  const std::string dir = qforge::test::temp_path("qforge_train", "adapter");
  qh::write_peft_adapter(dir, services_->export_adapters(), model_dir_);
  services_.reset();  // the plugin's adapters go; the packed layers stay

  // qforge's --adapter path: the packed model + apply_peft_adapter.
  qh::apply_peft_adapter(*model_, dir);
  at::Tensor ids = at::randint(0, 512, {2, 40}, at::kLong);
  at::Tensor ours = model_->forward(ids);

  // The reader above on a dense copy.
  const auto deltas = read_peft_deltas(dir);
  EXPECT_EQ(deltas.size(), 35u);
  qh::Model ref = qh::Model::load(model_dir_, at::kFloat);
  for (size_t b = 0; b < ref.blocks().size(); ++b) {
    auto packed = model_->blocks()[b].linears();
    auto dense = ref.blocks()[b].linears();
    for (size_t i = 0; i < dense.size(); ++i) {
      at::Tensor w = packed[i]->packed ? packed[i]->packed->dequantize() : dense[i]->weight;
      dense[i]->weight = w + deltas.at(dense[i]->name);
    }
  }
  at::Tensor theirs = ref.forward(ids);
  EXPECT_LT(rel_diff(ours, theirs), 1e-5);
  fs::remove_all(dir);
}

}  // namespace
