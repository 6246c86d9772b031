// qforge-lora: LoRA fine-tuning of a quantized model as a post-process, the
// three variants of OneComp's PostProcessLoraSFT (research/onecomp.md §12):
//
//   org.qforge.lora.sft           causal-LM loss on the training text
//   org.qforge.lora.teacher-sft   + distillation from the unquantized model
//   org.qforge.lora.teacher-only  distillation alone
//
// Each chosen linear gets an adapter (Hu et al. 2021, "LoRA: Low-Rank
// Adaptation of Large Language Models", Eq. 3 and §4.1):
//
//     h = W₀x + (α/r)·B·A·dropout(x),   A ∈ ℝ^{r×in}, B ∈ ℝ^{out×r},
//
// A Kaiming-uniform (a = √5, bound 1/√in), B = 0, so training starts from
// the quantized model. W₀ stays frozen and packed: the host differentiates
// through its inference layer's backward_input, so adapters go on any
// quantized linear, not only GPTQ's. The loss (OneComp §12.2):
//
//     L = w_sft·CE + w_teacher·(τ²·KL(p_T^τ ‖ p_S^τ)  or  logits MSE) + w_ib·MSE(h_S, h_T)
//
// (Hinton et al. 2015 for the τ² KL), averaged over gradient accumulation.
// The host owns autograd, the losses, AdamW, the schedule, the teacher and
// the checkpoints (qforge/ext/train.h); this file owns the policy.
#include <qforge/cpp/metadata.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/cpp/train.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

// splitmix64: noise that depends only on (seed, element index), the same on
// every machine and for any thread split.
uint64_t splitmix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The adapter of one linear layer.
class LoraAdapter {
 public:
  LoraAdapter(int64_t out, int64_t in, int64_t r, double alpha, double dropout, uint64_t seed)
      : r_(r), alpha_(alpha), dropout_(dropout), scaling_(alpha / static_cast<double>(r)) {
    // A: Kaiming-uniform with a = √5 (PyTorch's nn.Linear default, as PEFT):
    // U(−1/√in, 1/√in), drawn from our own seeded generator.
    A_ = at::empty({r, in}, at::kFloat);
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    float* a = A_.data_ptr<float>();
    for (int64_t i = 0; i < r * in; ++i) {
      const double u = static_cast<double>(splitmix(seed ^ static_cast<uint64_t>(i)) >> 11) * 0x1.0p-53;
      a[i] = static_cast<float>((2 * u - 1) * bound);
    }
    B_ = at::zeros({out, r}, at::kFloat);
    views_[0] = std::make_unique<qforge::DLView>(A_);
    views_[1] = std::make_unique<qforge::DLView>(B_);
    metadata_ = qforge::Metadata{{"r", r}, {"lora_alpha", alpha}, {"lora_dropout", dropout}}.dump();
  }

  uint32_t param_count() const { return 2; }
  void param(uint32_t i, const char** name, const DLTensor** value) const {
    if (i > 1) qforge::invalid_argument("lora: no param " + std::to_string(i));
    *name = i == 0 ? "lora_A" : "lora_B";
    *value = views_[i]->get();
  }

  // y += s·B·A·dropout(x)
  void forward(bool training, uint64_t seed, const DLTensor& x, const DLTensor& y) const {
    at::Tensor xd = dropped(qforge::borrow_float_cpu(x, "lora x"), training, seed);
    at::Tensor yt = qforge::borrow_float_cpu(y, "lora y");
    yt.add_(at::matmul(at::matmul(xd, A_.t()), B_.t()), scaling_);
  }

  // With u = dropout(x)·Aᵀ:  ∂L/∂B = s·gᵀu,  ∂L/∂A = s·(g·B)ᵀ·dropout(x),
  // ∂L/∂x = mask ⊙ s·(g·B)·A.
  void backward(bool training, uint64_t seed, const DLTensor& x, const DLTensor& grad_y,
                const DLTensor& grad_x, const DLTensor* const* grads) const {
    at::Tensor xt = qforge::borrow_float_cpu(x, "lora x");
    at::Tensor g = qforge::borrow_float_cpu(grad_y, "lora grad_y");
    at::Tensor gx = qforge::borrow_float_cpu(grad_x, "lora grad_x");
    at::Tensor gA = qforge::borrow_float_cpu(*grads[0], "lora grad A");
    at::Tensor gB = qforge::borrow_float_cpu(*grads[1], "lora grad B");
    at::Tensor xd = dropped(xt, training, seed);
    at::Tensor u = at::matmul(xd, A_.t());             // [n, r]
    at::Tensor gu = at::matmul(g, B_).mul_(scaling_);  // [n, r]
    gB.add_(at::matmul(g.t(), u), scaling_);
    gA.add_(at::matmul(gu.t(), xd));
    at::Tensor gxd = at::matmul(gu, A_);
    if (training && dropout_ > 0) gxd = dropped(gxd, true, seed);  // same mask, same 1/(1−p)
    gx.add_(gxd);
  }

  // W += s·B·A
  void merge(const DLTensor& weight) const {
    at::Tensor w = qforge::borrow_float_cpu(weight, "lora merge weight");
    w.add_(at::matmul(B_, A_), scaling_);
  }

  const char* export_format(const char** metadata) const {
    *metadata = metadata_.c_str();
    return "peft.lora/1";
  }

 private:
  // x with each element kept with probability 1 − p and scaled by 1/(1 − p)
  // (inverted dropout), the mask drawn from (seed, element index).
  at::Tensor dropped(const at::Tensor& x, bool training, uint64_t seed) const {
    if (!training || dropout_ <= 0) return x;
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    const at::Tensor xc = x.contiguous();
    const float* src = xc.data_ptr<float>();
    float* dst = out.data_ptr<float>();
    const uint64_t threshold = static_cast<uint64_t>(dropout_ * 18446744073709551616.0);
    const float keep_scale = static_cast<float>(1.0 / (1.0 - dropout_));
    at::parallel_for(0, xc.numel(), 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        dst[i] = splitmix(seed ^ splitmix(static_cast<uint64_t>(i))) < threshold ? 0.0f : src[i] * keep_scale;
    });
    return out;
  }

  int64_t r_;
  double alpha_, dropout_, scaling_;
  at::Tensor A_, B_;
  std::unique_ptr<qforge::DLView> views_[2];
  std::string metadata_;
};

// What each variant weighs by default.
struct Variant {
  double sft_weight, teacher_weight;
};

// The leaf of "model.layers.0.self_attn.q_proj": "q_proj".
std::string leaf(const std::string& name) {
  const size_t dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

template <const Variant& V>
struct LoraSft {
  static void run(const qforge::Host& host, const qforge_model_services& model,
                  const qforge::Params& p) {
    if (host.get()->abi_minor < 1 || model.struct_size < sizeof(qforge_model_services))
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED, "LoRA needs a host of ABI 1.1 or later");
    const int64_t r = p.get_int("lora_r");
    const double alpha = p.get_float("lora_alpha"), dropout = p.get_float("lora_dropout");
    const double w_sft = p.get_float("sft_loss_weight"), w_teacher = p.get_float("teacher_loss_weight");
    const double w_ib = p.get_float("intermediate_block_loss_weight");
    if (w_sft <= 0 && w_teacher <= 0 && w_ib <= 0)
      qforge::invalid_argument("every loss weight is 0: nothing to train on");

    // Where the adapters go: linears whose leaf name is a target module
    // (OneComp: every linear when none matches).
    const std::vector<std::string> targets = p.get_strings("target_modules");
    std::vector<uint32_t> chosen;
    int64_t hidden = 0;
    const uint32_t n = model.layer_count(&model);
    for (uint32_t i = 0; i < n; ++i) {
      int64_t out = 0, in = 0;
      uint32_t block = 0;
      const char* format = nullptr;
      qforge::check(host.get(), model.layer_info(&model, i, &out, &in, &block, &format));
      if (hidden == 0) hidden = in;  // the first linear reads the residual stream
      if (std::find(targets.begin(), targets.end(), leaf(model.layer_name(&model, i))) != targets.end())
        chosen.push_back(i);
    }
    if (chosen.empty()) {
      host.log(QFORGE_LOG_WARN, "lora: no linear matches target_modules; adapters go on every linear");
      for (uint32_t i = 0; i < n; ++i) chosen.push_back(i);
    }

    // Optimizer and schedule. lr 0: 1e-4·√(4096/hidden): OneComp's 1e-4 at
    // the width of a 7B model, larger for narrower ones (on stories260K,
    // width 64, 8e-4; OneComp's 1e-4 with 16-step accumulation recovers a
    // quarter of the gap there, 4e-4 to 6e-3 all recover 70-80%).
    double lr = p.get_float("lr");
    if (lr == 0) lr = 1e-4 * std::sqrt(4096.0 / static_cast<double>(std::max<int64_t>(hidden, 1)));
    qforge_train_config cfg{};
    cfg.struct_size = sizeof cfg;
    cfg.teacher = (w_teacher > 0 || w_ib > 0) ? 1 : 0;
    cfg.max_length = static_cast<uint64_t>(p.get_int("max_length"));
    cfg.max_samples = static_cast<uint64_t>(p.get_int("max_train_samples"));
    cfg.batch_size = static_cast<uint64_t>(p.get_int("batch_size"));
    cfg.shuffle_seed = static_cast<uint64_t>(p.get_int("shuffle_seed"));
    cfg.lr = lr;
    cfg.weight_decay = p.get_float("weight_decay");
    cfg.beta1 = 0.9;
    cfg.beta2 = 0.999;
    cfg.eps = 1e-8;
    cfg.max_grad_norm = p.get_float("max_grad_norm");
    const bool kl = p.get_enum("teacher_loss_type") == "kl";
    const double tau = p.get_float("teacher_temperature");
    const bool cache = p.get_bool("cache_teacher_outputs") && kl && w_teacher > 0;
    if (cache && w_ib > 0)  // block outputs need the live teacher, which the cache would free
      host.log(QFORGE_LOG_WARN, "lora: cache_teacher_outputs is ignored with an intermediate "
                                "block loss (the teacher must run for its block outputs)");
    if (cache && w_ib == 0) {
      cfg.teacher_top_k = static_cast<uint32_t>(p.get_int("teacher_top_k"));
      cfg.teacher_cache_temperature = tau;
    }

    // The trainer reads the data; the step count depends on it.
    qforge::Trainer trainer(host, model, cfg);
    const uint64_t batches = trainer.batch_count();
    const uint64_t epochs = static_cast<uint64_t>(p.get_int("epochs"));
    const uint64_t micro = batches * epochs;
    uint64_t accum = static_cast<uint64_t>(p.get_int("gradient_accumulation_steps"));
    if (accum == 0) accum = std::clamp<uint64_t>(micro / 100, 1, 16);  // ~100 updates, at most 16
    const uint64_t updates = (micro + accum - 1) / accum;
    const uint64_t warmup = static_cast<uint64_t>(std::ceil(p.get_float("warmup_ratio") * updates));
    trainer.set_schedule(warmup, updates);

    // Adapters, each seeded by its layer index.
    for (uint32_t i : chosen) {
      int64_t out = 0, in = 0;
      uint32_t block = 0;
      const char* format = nullptr;
      qforge::check(host.get(), model.layer_info(&model, i, &out, &in, &block, &format));
      trainer.attach(model.layer_name(&model, i),
                     std::make_unique<LoraAdapter>(out, in, r, alpha, dropout,
                                                   splitmix(cfg.shuffle_seed) ^ splitmix(i)));
    }
    host.log(QFORGE_LOG_INFO,
             "lora: r " + std::to_string(r) + ", alpha " + std::to_string(alpha) + " on " +
                 std::to_string(chosen.size()) + " linears; " + std::to_string(epochs) +
                 " epochs of " + std::to_string(batches) + " batches, " + std::to_string(accum) +
                 " per update, " + std::to_string(updates) + " updates, lr " + std::to_string(lr));

    // The loss terms.
    std::vector<qforge_loss_term> terms;
    if (w_sft > 0) terms.push_back(qforge::loss_term(QFORGE_LOSS_CROSS_ENTROPY, w_sft));
    if (w_teacher > 0)
      terms.push_back(qforge::loss_term(kl ? QFORGE_LOSS_KL_TEACHER : QFORGE_LOSS_MSE_TEACHER_LOGITS,
                                        w_teacher, tau));
    std::vector<uint32_t> blocks;
    for (int64_t b : p.get_ints("intermediate_block_indices")) blocks.push_back(static_cast<uint32_t>(b));
    if (w_ib > 0) terms.push_back(qforge::loss_term(QFORGE_LOSS_MSE_TEACHER_BLOCKS, w_ib, 1.0, &blocks));

    run_loop(host, trainer, terms, batches, micro, accum);
  }

  // Micro-batch g is batch g mod batches of epoch g / batches; an update
  // after every `accum` of them (and after the last). Checkpoints at updates.
  static void run_loop(const qforge::Host& host, qforge::Trainer& trainer,
                       const std::vector<qforge_loss_term>& terms, uint64_t batches, uint64_t micro,
                       uint64_t accum) {
    for (uint64_t g = trainer.restore_state(); g < micro; ++g) {
      const uint64_t group_start = g - g % accum;
      const uint64_t group = std::min(accum, micro - group_start);
      trainer.loss_backward(g / batches, g % batches, terms, 1.0 / static_cast<double>(group), nullptr);
      if ((g + 1) % accum == 0 || g + 1 == micro) {
        trainer.step();
        const bool stop = host.get()->is_cancelled(host.get()) != 0;
        trainer.save_state(g + 1, stop);
        host.check_cancelled();
      }
    }
  }
};

constexpr Variant kSft{1.0, 0.0};
constexpr Variant kTeacherSft{1.0, 1.0};
constexpr Variant kTeacherOnly{0.0, 1.0};

template <const Variant& V>
void describe_variant(qforge::Plugin& plugin, const qforge::About& about) {
  plugin.postprocess<LoraSft<V>>(about)
      .min_host_minor(1)
      .features({"trains", "adapter", "peft-lora"})
      .param_int("lora_r", 16, 1, 4096, "rank r of each adapter")
      .param_float("lora_alpha", 32, 1e-9, 1e9, "alpha; the adapter is scaled by alpha / r")
      .param_float("lora_dropout", 0.05, 0, 0.99, "dropout on the adapter's input while training")
      .param_float("lr", 0, 0, 10, "peak learning rate; 0 = 1e-4 * sqrt(4096 / hidden_size) (OneComp's 1e-4 at a 7B model's width)")
      .param_int("epochs", 4, 1, 100000, "passes over the training data")
      .param_int("batch_size", 1, 1, 4096, "sequences per micro-batch")
      .param_int("gradient_accumulation_steps", 0, 0, 1 << 20,
                 "micro-batches per update; 0 = enough for about 100 updates, at most 16")
      .param_float("weight_decay", 0, 0, 10, "AdamW decoupled weight decay")
      .param_float("warmup_ratio", 0.03, 0, 1, "fraction of the updates spent warming the rate up from 0")
      .param_float("max_grad_norm", 1.0, 0, 1e9, "clip the global gradient norm to this (0 = off)")
      .param_int("max_length", 1024, 2, 1 << 20, "tokens per training sequence (cut to the model's positions)")
      .param_int("max_train_samples", 0, 0, 1LL << 40, "sequences used at most (0 = all)")
      .param_int("shuffle_seed", 42, 0, (1LL << 53), "seed of the data order, dropout and A's initialisation")
      .param_strings("target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                     "leaf names of the linears that get adapters (none matching: all)")
      .param_float("sft_loss_weight", V.sft_weight, 0, 1e9, "weight of the next-token cross-entropy")
      .param_float("teacher_loss_weight", V.teacher_weight, 0, 1e9, "weight of the distillation loss")
      .param_enum("teacher_loss_type", "kl", {"kl", "mse"},
                  "kl: tau^2 KL(teacher || student) at temperature tau; mse: logits MSE")
      .param_float("teacher_temperature", 1.0, 1e-6, 1e6, "temperature tau of the KL loss")
      .param_bool("cache_teacher_outputs", false,
                  "compute the teacher once and keep its top-k log-probabilities on disk (KL only)")
      .param_int("teacher_top_k", 64, 1, 1 << 20, "log-probabilities kept per token by the cache")
      .param_float("intermediate_block_loss_weight", 0, 0, 1e9,
                   "weight of the MSE between student and teacher block outputs (padding masked)")
      .param_ints("intermediate_block_indices", "", 0, 1 << 20,
                  "blocks whose outputs that loss compares (empty = all)");
}

void describe(qforge::Plugin& plugin) {
  describe_variant<kSft>(plugin,
      {"org.qforge.lora.sft", "LoRA SFT", "1.0.0", "qforge", "MIT",
       "LoRA adapters (Hu et al. 2021) on the quantized linears, trained with the causal-LM loss "
       "on local text (OneComp's PostProcessLoraSFT). Saved as a PEFT LoRA adapter."});
  describe_variant<kTeacherSft>(plugin,
      {"org.qforge.lora.teacher-sft", "LoRA teacher SFT", "1.0.0", "qforge", "MIT",
       "LoRA SFT plus distillation from the unquantized model: tau^2 KL at temperature tau "
       "(Hinton et al. 2015) or logits MSE (OneComp's PostProcessLoraTeacherSFT)."});
  describe_variant<kTeacherOnly>(plugin,
      {"org.qforge.lora.teacher-only", "LoRA teacher-only", "1.0.0", "qforge", "MIT",
       "LoRA adapters trained on distillation from the unquantized model alone "
       "(OneComp's PostProcessLoraTeacherOnlySFT)."});
}

}  // namespace

QFORGE_PLUGIN("qforge-lora", "1.0.0", describe)
