// qforge-blockwise: block-wise reconstruction of a quantized model (BRECQ,
// Li et al. 2021, "BRECQ: pushing the limit of post-training quantization by
// block reconstruction", §3.2; OneComp's BlockWisePTQ phase 1,
// research/onecomp.md §13), for any packed format. In the quantization
// pipeline's per-block hook (`qforge quantize … --postprocess
// org.qforge.blockwise`), each block's output on its quantized input stream
// is pulled towards the full-precision block's output on the same input,
//
//   min_θ  ‖f_block(X; θ) − f_block^FP(X)‖²  (QFORGE_LOSS_MSE_BLOCK_TARGET),
//
// over θ = the tunable parameters its inference layers offer
// (qforge.layer.tunable: a grid's scales and zero points, DBF's scale
// vectors, QuIP's scales), with Adam, gradient clipping and a linear decay;
// the codes stay, so every layer stays in its own format, and the host writes
// the tuned parameters back into it, rounded to what the format stores. A
// layer whose format has nothing to tune is skipped with a log line. The
// tuned block's output feeds the next block's quantization; when tuning did
// not lower the block's error, the host rolls it back. The plugin never
// names a format or a tensor.
//
// Not yet (issue 15): tuning the integer codes (AdaRound-style), CBQ's
// two-block window, GlobalPTQ, and running on a saved checkpoint through
// `qforge postprocess`.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/train.hpp>

#include <algorithm>
#include <string>
#include <vector>

namespace {

struct BlockwisePtq {
  static void run(const qforge::Host&, const qforge_model_services&, const qforge::Params&) {
    qforge::invalid_argument(
        "org.qforge.blockwise runs inside the quantization pipeline, block by block: "
        "qforge quantize ... --postprocess org.qforge.blockwise");
  }

  static void run_block(const qforge::Host& host, const qforge_model_services& model,
                        uint32_t block, const qforge::Params& p) {
    qforge_train_config cfg{};
    cfg.struct_size = sizeof cfg;
    cfg.batch_size = static_cast<uint64_t>(p.get_int("batch_size"));
    cfg.shuffle_seed = static_cast<uint64_t>(p.get_int("seed"));
    cfg.lr = p.get_float("lr");
    cfg.beta1 = 0.9;
    cfg.beta2 = 0.999;
    cfg.eps = 1e-8;
    cfg.max_grad_norm = p.get_float("max_grad_norm");
    qforge::Trainer trainer(host, model, cfg);

    // θ: every tunable parameter of the block's packed linears.
    int tuned = 0;
    for (uint32_t i = 0, n = model.layer_count(&model); i < n; ++i) {
      int64_t out = 0, in = 0;
      uint32_t b = 0;
      const char* format = nullptr;
      qforge::check(host.get(), model.layer_info(&model, i, &out, &in, &b, &format));
      const char* name = model.layer_name(&model, i);
      if (b != block || format == nullptr || *format == '\0') continue;
      std::string why;
      if (trainer.tune(name, &why))
        ++tuned;
      else
        host.log(QFORGE_LOG_INFO, std::string("blockwise: ") + name + " (" + format +
                                      ") has nothing to tune: skipped (" + why + ")");
    }
    if (tuned == 0) {
      host.log(QFORGE_LOG_INFO, "blockwise: block " + std::to_string(block) +
                                    " has no tunable parameters: left as quantized");
      return;
    }

    const uint64_t batches = trainer.batch_count();
    const uint64_t epochs = static_cast<uint64_t>(p.get_int("epochs"));
    trainer.set_schedule(0, batches * epochs);
    const std::vector<qforge_loss_term> terms = {
        qforge::loss_term(QFORGE_LOSS_MSE_BLOCK_TARGET, 1.0)};
    double first = 0, last = 0;
    for (uint64_t e = 0; e < epochs; ++e) {
      double sum = 0;
      for (uint64_t k = 0; k < batches; ++k) {
        double value = 0;
        trainer.loss_backward(e, k, terms, 1.0, &value);
        trainer.step();
        sum += value;
        host.check_cancelled();
      }
      (e == 0 ? first : last) = sum / static_cast<double>(std::max<uint64_t>(batches, 1));
      if (e == 0) last = first;
    }
    host.log(QFORGE_LOG_INFO, "blockwise: block " + std::to_string(block) + ", " +
                                  std::to_string(tuned) + " linears tuned, block MSE " +
                                  std::to_string(first) + " (first epoch) -> " +
                                  std::to_string(last) + " (last)");
  }
};

void describe(qforge::Plugin& plugin) {
  plugin.postprocess<BlockwisePtq>(
          {"org.qforge.blockwise", "Block-wise reconstruction", "0.1.0", "qforge", "MIT",
           "BRECQ-style block-wise reconstruction (OneComp's BlockWisePTQ phase 1) of any packed "
           "format: in the quantization pipeline, each block's tunable format parameters "
           "(scales, zero points, scale vectors) are trained with Adam so that its output "
           "matches the full-precision block's on the same inputs; the layers stay in their "
           "formats. Codes, CBQ and GlobalPTQ are not implemented yet."})
      .min_host_minor(1)
      .param_int("epochs", 20, 1, 100000, "passes over the block's calibration inputs")
      .param_float("lr", 1e-3, 0, 1, "Adam learning rate (linear decay to 0)")
      .param_int("batch_size", 4, 1, 1 << 20, "calibration sequences per step")
      .param_float("max_grad_norm", 1.0, 0, 1e9, "global gradient-norm clipping (0: none)")
      .param_int("seed", 0, 0, (1LL << 53), "order of the calibration sequences");
}

}  // namespace

QFORGE_PLUGIN("qforge-blockwise", "0.1.0", describe)
