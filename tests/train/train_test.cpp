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
  qforge_train_config cfg{};
  cfg.struct_size = sizeof cfg;
  cfg.max_length = 64;
  cfg.max_samples = 1;
  cfg.batch_size = 1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.999;
  cfg.eps = 1e-8;
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
