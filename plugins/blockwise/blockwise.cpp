// qforge-blockwise: reconstruction of a quantized model by tuning what its
// packed formats let training tune, for any format (the plugin never names a
// format or a tensor); three post-processes:
//
// org.qforge.blockwise — block-wise reconstruction (BRECQ, Li et al. 2021,
//   "BRECQ: pushing the limit of post-training quantization by block
//   reconstruction", §3.2; OneComp's BlockWisePTQ phase 1,
//   research/onecomp.md §13.2): for each block, the full-precision block on
//   the student's input is the target,
//
//     min_θ  ‖f_block(X; θ) − f_block^FP(X)‖²,
//
//   over θ = the tunable parameters of the block's inference layers
//   (qforge.layer.tunable: a grid's scales and zero points, DBF's scale
//   vectors, QuIP's scales), and with `codes` the integer codes of grid
//   formats through straight-through rounding offsets (AutoRound, Cheng et
//   al. 2023, eq. 2). Adam with clipping and a linear decay; the state of
//   the epoch with the lowest error over every calibration input is kept,
//   the untuned one when no epoch beats it. In the quantization pipeline
//   (run_block) block i+1 is quantized on the tuned block's output; on a
//   saved checkpoint (`qforge postprocess`, run) each block is a window of
//   one (below), on the training data.
// org.qforge.cbq — CBQ's cross-block reconstruction (Ding et al. 2023, "CBQ:
//   Cross-Block Quantization for Large Language Models", §3.2; OneComp's
//   phase 2): windows of `window` adjacent blocks, sliding by one, each tuned
//   jointly against the teacher's same blocks on the student's input to the
//   window (OneComp feeds the teacher its own stream instead).
// org.qforge.globalptq — whole-model distillation (OneComp's GlobalPTQ,
//   research/onecomp.md §13.3): τ²·KL(p_T ‖ p_S) at temperature τ over the
//   training data, every tunable parameter of the model at once, cosine
//   schedule with warm-up, evaluated on held-out sequences, early stop,
//   best state kept.
//
// The codes and parameters stay in their formats: the host writes what was
// tuned back into each layer's own tensors (qforge.layer.tunable `store`),
// rounded to what the format stores. A layer with nothing to tune is skipped
// with a log line.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/train.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string fixed(double v, int digits = 4) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

// Adam as OneComp's optimizers use it (no weight decay).
qforge_train_config adam(const qforge::Params& p) {
  qforge_train_config cfg{};
  cfg.struct_size = sizeof cfg;
  cfg.batch_size = static_cast<uint64_t>(p.get_int("batch_size"));
  cfg.shuffle_seed = static_cast<uint64_t>(p.get_int("seed"));
  cfg.lr = p.get_float("lr");
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.999;
  cfg.eps = 1e-8;
  cfg.max_grad_norm = p.get_float("max_grad_norm");
  return cfg;
}

// The model's packed linears (a format set), with their blocks.
struct PackedLinear {
  const char* name;
  const char* format;
  uint32_t block;
};
std::vector<PackedLinear> packed_linears(const qforge::Host& host, const qforge_model_services& model) {
  std::vector<PackedLinear> out;
  for (uint32_t i = 0, n = model.layer_count(&model); i < n; ++i) {
    int64_t rows = 0, cols = 0;
    uint32_t b = 0;
    const char* format = nullptr;
    qforge::check(host.get(), model.layer_info(&model, i, &rows, &cols, &b, &format));
    if (format != nullptr && *format != '\0') out.push_back({model.layer_name(&model, i), format, b});
  }
  return out;
}

// The packed linears whose block is accepted by `in_scope`, made trainable
// (with their codes when `codes`); returns how many.
template <class InScope>
int tune_layers(const qforge::Host& host, const qforge_model_services& model,
                qforge::Trainer& trainer, InScope in_scope, bool codes, double code_lr,
                bool quiet) {
  int tuned = 0;
  for (const PackedLinear& l : packed_linears(host, model)) {
    if (!in_scope(l.block)) continue;
    std::string why;
    if (!trainer.tune(l.name, &why)) {
      if (!quiet)
        host.log(QFORGE_LOG_INFO, std::string("reconstruction: ") + l.name + " (" + l.format +
                                      ") has nothing to tune: skipped (" + why + ")");
      continue;
    }
    ++tuned;
    if (codes && !trainer.tune_codes(l.name, code_lr, &why) && !quiet)
      host.log(QFORGE_LOG_INFO, std::string("reconstruction: ") + l.name + " (" + l.format +
                                    "): its scales only (" + why + ")");
  }
  return tuned;
}

// Epochs of `terms`, keeping the state with the lowest evaluated loss (the
// untuned state included): what reconstruction of one block or window does.
struct Fit {
  double before = 0, best = 0;
  uint64_t best_epoch = 0;  // 0: the untuned state
};

Fit fit(const qforge::Host& host, qforge::Trainer& trainer, const std::vector<qforge_loss_term>& terms,
        uint64_t epochs) {
  const uint64_t batches = trainer.batch_count();
  trainer.set_schedule(0, batches * epochs);
  Fit f;
  f.before = f.best = trainer.evaluate(terms)[0];
  trainer.keep_state();
  for (uint64_t e = 1; e <= epochs; ++e) {
    for (uint64_t k = 0; k < batches; ++k) {
      trainer.loss_backward(e - 1, k, terms, 1.0, nullptr);
      trainer.step();
      host.check_cancelled();
    }
    const double loss = trainer.evaluate(terms)[0];
    if (loss < f.best) {
      f.best = loss;
      f.best_epoch = e;
      trainer.keep_state();
    }
  }
  trainer.revert_state();
  return f;
}

// "block 3/8: 7 linears, MSE 0.0123 -> 0.00812 (epoch 14/20), 2.1 s, ETA 10 s"
void report(const qforge::Host& host, const std::string& what, int tuned, const Fit& f,
            uint64_t epochs, double secs, double eta) {
  host.log(QFORGE_LOG_INFO,
           what + ": " + std::to_string(tuned) + " linears, MSE " + fixed(f.before) + " -> " +
               fixed(f.best) +
               (f.best_epoch == 0 ? std::string(" (no epoch did better: left as quantized)")
                                  : " (epoch " + std::to_string(f.best_epoch) + "/" +
                                        std::to_string(epochs) + ")") +
               ", " + fixed(secs, 3) + " s" + (eta > 0 ? ", ETA " + fixed(eta, 3) + " s" : ""));
}

// Windows of `width` consecutive blocks from 0, sliding by one, on the
// training data against the teacher; resumable window by window (every
// window's trainer holds every tunable layer of the model, so the
// checkpoint of one is the state of all; layers outside the window get no
// gradient, and a fresh Adam leaves them where they are).
void reconstruct_windows(const qforge::Host& host, const qforge_model_services& model,
                         const qforge::Params& p, uint32_t width, const char* who) {
  const uint32_t blocks = model.block_count(&model);
  if (width > blocks) qforge::invalid_argument(std::string(who) + ": window wider than the model");
  qforge_train_config cfg = adam(p);
  cfg.teacher = 1;
  cfg.max_length = static_cast<uint64_t>(p.get_int("max_length"));
  cfg.max_samples = static_cast<uint64_t>(p.get_int("max_samples"));
  cfg.holdout = static_cast<uint64_t>(p.get_int("holdout"));
  const bool codes = p.get_bool("codes");
  const double code_lr = p.get_float("code_lr");
  const uint64_t epochs = static_cast<uint64_t>(p.get_int("epochs"));
  const uint32_t windows = blocks - width + 1;
  uint64_t done = 0;
  const Clock::time_point t0 = Clock::now();
  for (uint32_t w = 0; w < windows; ++w) {
    qforge::Trainer trainer(host, model, cfg);
    const int all = tune_layers(host, model, trainer, [](uint32_t) { return true; }, codes,
                                code_lr, w > 0);
    if (all == 0) {
      host.log(QFORGE_LOG_INFO, std::string(who) + ": the model has no tunable parameters: left as it is");
      return;
    }
    if (w == 0) done = trainer.restore_state();  // windows finished by an earlier run
    if (w < done) continue;
    const std::vector<uint32_t> first = {w};
    qforge_loss_term term = qforge::loss_term(QFORGE_LOSS_MSE_WINDOW_TARGET, 1.0, 1.0, &first);
    term.block_count = width;
    const Clock::time_point tw = Clock::now();
    const Fit f = fit(host, trainer, {term}, epochs);
    int in_window = 0;  // packed linears of the window
    for (const PackedLinear& l : packed_linears(host, model)) in_window += l.block >= w && l.block < w + width;
    trainer.save_state(w + 1, /*force=*/true);
    const double per = seconds_since(t0) / static_cast<double>(w + 1 - done);
    const std::string what = width == 1 ? "block " + std::to_string(w + 1) + "/" + std::to_string(blocks)
                                        : "blocks " + std::to_string(w) + "-" + std::to_string(w + width - 1) +
                                              " (window " + std::to_string(w + 1) + "/" +
                                              std::to_string(windows) + ")";
    report(host, std::string(who) + ": " + what, in_window, f, epochs, seconds_since(tw),
           per * static_cast<double>(windows - w - 1));
  }
}

void common_params(qforge::ComponentBuilder& b, int64_t epochs, double lr) {
  b.param_int("epochs", epochs, 1, 100000, "passes over the data per block or window")
      .param_float("lr", lr, 0, 1, "Adam learning rate of the scales and zero points (linear decay to 0)")
      .param_int("batch_size", 4, 1, 1 << 20, "sequences per step")
      .param_float("max_grad_norm", 1.0, 0, 1e9, "global gradient-norm clipping (0: none)")
      .param_int("seed", 0, 0, (1LL << 53), "order of the sequences")
      .param_bool("codes", false,
                  "also tune the formats' discrete codes straight through (a grid's codes by at "
                  "most one step, DBF's signs), written back into the format")
      .param_float("code_lr", 5e-3, 0, 1, "Adam learning rate of the code offsets (grid steps; signs)");
}

// The training data of a whole-model run; `when` says when they apply.
void window_params(qforge::ComponentBuilder& b, const std::string& when) {
  static std::deque<std::string> help;  // the builder keeps the pointers: they must stay
  help.push_back(when + "tokens per training sequence (0: the model's positions, at most 1024)");
  const char* length = help.back().c_str();
  help.push_back(when + "training sequences (0: all)");
  const char* samples = help.back().c_str();
  help.push_back(when + "of them held out to pick the best state");
  const char* holdout = help.back().c_str();
  b.param_int("max_length", 0, 0, 1 << 20, length)
      .param_int("max_samples", 128, 0, 1 << 30, samples)
      .param_int("holdout", 8, 1, 1 << 20, holdout);
}

struct BlockwisePtq {
  // On a saved checkpoint: each block a window of one.
  static void run(const qforge::Host& host, const qforge_model_services& model,
                  const qforge::Params& p) {
    reconstruct_windows(host, model, p, 1, "blockwise");
  }

  // In the pipeline: the block on its calibration inputs against the
  // full-precision block's outputs on them.
  static void run_block(const qforge::Host& host, const qforge_model_services& model,
                        uint32_t block, const qforge::Params& p) {
    const Clock::time_point t0 = Clock::now();
    qforge::Trainer trainer(host, model, adam(p));
    const int tuned = tune_layers(host, model, trainer, [&](uint32_t b) { return b == block; },
                                  p.get_bool("codes"), p.get_float("code_lr"), false);
    if (tuned == 0) {
      host.log(QFORGE_LOG_INFO, "blockwise: block " + std::to_string(block) +
                                    " has no tunable parameters: left as quantized");
      return;
    }
    const uint64_t epochs = static_cast<uint64_t>(p.get_int("epochs"));
    const Fit f = fit(host, trainer, {qforge::loss_term(QFORGE_LOSS_MSE_BLOCK_TARGET, 1.0)}, epochs);
    const double secs = seconds_since(t0);
    const uint32_t blocks = model.block_count(&model);
    report(host, "blockwise: block " + std::to_string(block + 1) + "/" + std::to_string(blocks),
           tuned, f, epochs, secs, 0);
  }
};

struct Cbq {
  static void run(const qforge::Host& host, const qforge_model_services& model,
                  const qforge::Params& p) {
    reconstruct_windows(host, model, p, static_cast<uint32_t>(p.get_int("window")), "cbq");
  }
};

struct GlobalPtq {
  static void run(const qforge::Host& host, const qforge_model_services& model,
                  const qforge::Params& p) {
    qforge_train_config cfg = adam(p);
    cfg.teacher = 1;
    cfg.max_length = static_cast<uint64_t>(p.get_int("max_length"));
    cfg.max_samples = static_cast<uint64_t>(p.get_int("max_samples"));
    cfg.holdout = static_cast<uint64_t>(p.get_int("holdout"));
    qforge::Trainer trainer(host, model, cfg);
    const int tuned = tune_layers(host, model, trainer, [](uint32_t) { return true; },
                                  p.get_bool("codes"), p.get_float("code_lr"), false);
    if (tuned == 0) {
      host.log(QFORGE_LOG_INFO, "globalptq: the model has no tunable parameters: left as it is");
      return;
    }
    const uint64_t batches = trainer.batch_count(), epochs = static_cast<uint64_t>(p.get_int("epochs"));
    const uint64_t total = batches * epochs;
    trainer.set_schedule(static_cast<uint64_t>(std::ceil(p.get_float("warmup_ratio") * total)), total);
    trainer.set_schedule_shape(QFORGE_SCHEDULE_COSINE);
    const double tau = p.get_float("temperature");
    const std::vector<qforge_loss_term> kl = {qforge::loss_term(QFORGE_LOSS_KL_TEACHER, 1.0, tau)};
    // Evaluated `evals_per_epoch` times an epoch; `patience` evaluations
    // without a new best stop it. (A resumed run starts its best anew.)
    const uint64_t every = std::max<uint64_t>(1, batches / static_cast<uint64_t>(p.get_int("evals_per_epoch")));
    const int64_t patience = p.get_int("patience");
    const uint64_t start = trainer.restore_state();
    double before = trainer.evaluate(kl)[0], best = before;
    trainer.keep_state();
    uint64_t best_step = 0;
    int64_t stale = 0;
    for (uint64_t g = start; g < total; ++g) {
      trainer.loss_backward(g / batches, g % batches, kl, 1.0, nullptr);
      trainer.step();
      trainer.save_state(g + 1, g + 1 == total);
      host.check_cancelled();
      if ((g + 1) % every != 0 && g + 1 != total) continue;
      const double loss = trainer.evaluate(kl)[0];
      host.log(QFORGE_LOG_INFO, "globalptq: step " + std::to_string(g + 1) + "/" +
                                    std::to_string(total) + ", held-out KL " + fixed(loss));
      if (loss < best) {
        best = loss;
        best_step = g + 1;
        stale = 0;
        trainer.keep_state();
      } else if (patience > 0 && ++stale >= patience) {
        host.log(QFORGE_LOG_INFO, "globalptq: no better held-out KL in " + std::to_string(patience) +
                                      " evaluations: stopped early");
        trainer.save_state(g + 1, true);
        break;
      }
    }
    trainer.revert_state();
    host.log(QFORGE_LOG_INFO, "globalptq: " + std::to_string(tuned) + " linears, held-out KL " +
                                  fixed(before) + " -> " + fixed(best) +
                                  (best_step == 0 ? std::string(" (no step did better: left as it was)")
                                                  : " (step " + std::to_string(best_step) + ")"));
  }
};

void describe(qforge::Plugin& plugin) {
  auto& blockwise =
      plugin.postprocess<BlockwisePtq>(
                {"org.qforge.blockwise", "Block-wise reconstruction", "0.2.0", "qforge", "MIT",
                 "BRECQ-style block-wise reconstruction (OneComp's BlockWisePTQ phase 1) of any "
                 "packed format: each block's tunable format parameters (scales, zero points, "
                 "scale vectors; with codes=true also the integer codes of grid formats) are "
                 "trained with Adam so that its output matches the full-precision block's on "
                 "the same inputs; the best epoch is kept; the layers stay in their formats. "
                 "Inside `qforge quantize` on the calibration data, block by block; on a saved "
                 "checkpoint on --train-data against --teacher."})
          .min_host_minor(1);
  common_params(blockwise, 20, 1e-3);
  window_params(blockwise, "on a saved checkpoint: ");

  auto& cbq = plugin.postprocess<Cbq>(
                        {"org.qforge.cbq", "Cross-block reconstruction (CBQ)", "0.2.0", "qforge", "MIT",
                         "CBQ-style cross-block reconstruction (OneComp's BlockWisePTQ phase 2): "
                         "windows of adjacent blocks, sliding by one, tuned jointly against the "
                         "teacher's same blocks on the student's input to the window; run it after "
                         "org.qforge.blockwise (`qforge quantize ... --postprocess org.qforge.blockwise "
                         "--postprocess org.qforge.cbq`) or on a saved checkpoint."})
                  .min_host_minor(1);
  common_params(cbq, 10, 5e-4);
  window_params(cbq, "");
  cbq.param_int("window", 2, 1, 1 << 16, "blocks per window");

  auto& global = plugin.postprocess<GlobalPtq>(
                           {"org.qforge.globalptq", "Global distillation of format parameters",
                            "0.2.0", "qforge", "MIT",
                            "OneComp's GlobalPTQ: every tunable format parameter of the model "
                            "trained at once on τ²·KL(teacher ‖ student), cosine schedule with "
                            "warm-up, held-out evaluation, early stop, best state kept; the layers "
                            "stay in their formats."})
                     .min_host_minor(1);
  common_params(global, 5, 1e-3);
  window_params(global, "");
  global.param_float("temperature", 1.0, 1e-3, 1e3, "τ of the KL loss")
      .param_float("warmup_ratio", 0.1, 0, 1, "share of the steps warming up")
      .param_int("evals_per_epoch", 4, 1, 1 << 20, "held-out evaluations per epoch")
      .param_int("patience", 3, 0, 1 << 20, "evaluations without a better held-out KL before stopping (0: never)");
}

}  // namespace

QFORGE_PLUGIN("qforge-blockwise", "0.2.0", describe)
