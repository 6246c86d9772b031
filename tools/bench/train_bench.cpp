// Training throughput of the post-process path: forward + backward through
// the packed model with LoRA adapters (the host's trainer: packed layers as
// autograd nodes whose backward is their inference layer's backward_input,
// the adapters through their plugin's forward/backward), against plain
// LibTorch autograd on the dequantized model with the same adapters as
// LibTorch ops, in the same run.
//
//   qforge_bench_train --model QUANTIZED_DIR --data FILE [--seqlen 256] [--batch 4] [--iters 20]
//
// Both compute the same next-token cross-entropy on the same batches; the
// figure is trained tokens per second (the optimizer step is not timed).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "qforge_host/base/allocator.hpp"
#include "qforge_host/data/calibration.hpp"
#include "qforge_host/plugins/services.hpp"
#include "qforge_host/save/checkpoint.hpp"
#include "qforge_host/save/peft.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/train/postprocess.hpp"

namespace qh = qforge::host;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  qh::keep_large_allocations_in_heap();
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  std::string model_dir, data;
  int64_t seqlen = 256, batch = 4, iters = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--model") model_dir = argv[i + 1];
    else if (a == "--data") data = argv[i + 1];
    else if (a == "--seqlen") seqlen = std::stoll(argv[i + 1]);
    else if (a == "--batch") batch = std::stoll(argv[i + 1]);
    else if (a == "--iters") iters = std::stoll(argv[i + 1]);
    else {
      fmt::print(stderr, "unknown option {}\n", a);
      return 2;
    }
  }
  if (model_dir.empty() || data.empty()) {
    fmt::print(stderr, "usage: qforge_bench_train --model QUANTIZED_DIR --data FILE [--seqlen N] "
                       "[--batch N] [--iters N]\n");
    return 2;
  }
  qh::Registry registry;
  registry.load();
  qh::Model model = qh::load_model(registry, model_dir, at::kFloat);
  auto tok = qh::load_tokenizer(model_dir);
  qh::PostprocessContext ctx;
  ctx.tokenizer = tok.get();
  ctx.data.file = data;

  // Adapters from the LoRA plugin (one short update so B is not zero), r 16.
  qh::ModelServices services(model, ctx);
  const qh::Component* lora = registry.find("org.qforge.lora.sft");
  if (lora == nullptr) {
    fmt::print(stderr, "no org.qforge.lora.sft plugin\n");
    return 1;
  }
  qh::ParamValues params(lora->desc->id, lora->desc->params, lora->desc->param_count,
                         {{"lora_dropout", "0"}, {"epochs", "1"}, {"max_train_samples", "1"},
                          {"max_length", std::to_string(seqlen)}});
  qh::run_postprocess(*lora, params, services);

  // The host's trainer: batches of `batch` sequences of `seqlen` tokens.
  const qforge_host_train* t = qh::host_train_table();
  qforge_train_config cfg{};
  cfg.struct_size = sizeof cfg;
  cfg.max_length = static_cast<uint64_t>(seqlen);
  cfg.batch_size = static_cast<uint64_t>(batch);
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.999;
  cfg.eps = 1e-8;
  qforge_trainer* trainer = nullptr;
  qh::throw_if_error(t->trainer_create(services.table(), &cfg, &trainer), "trainer_create");
  const uint64_t batches = t->batch_count(trainer);
  qforge_loss_term ce{sizeof(qforge_loss_term), QFORGE_LOSS_CROSS_ENTROPY, 1.0, 1.0, nullptr, 0, 0};
  const qforge_loss_term* terms[] = {&ce};
  auto ours = [&](int64_t i) {
    qh::throw_if_error(t->loss_backward(trainer, 0, static_cast<uint64_t>(i) % batches, terms, 1,
                                        1.0, nullptr), "loss_backward");
  };

  // The baseline: a dense copy with the dequantized weights and the same
  // adapters as LibTorch ops (A and B leaves of autograd).
  qh::Model dense = qh::Model::load(model_dir, at::kFloat, true,
                                    qh::packed_linear_loader(registry, model_dir));
  for (auto& b : dense.blocks())
    for (qh::Linear* l : b.linears())
      if (l->packed) {
        l->weight = l->packed->dequantize();
        l->packed.reset();
      }
  std::vector<qh::AdapterExport> adapters = services.export_adapters();
  for (auto& a : adapters)
    for (auto& [name, p] : a.params) p = p.clone().set_requires_grad(true);
  qh::apply_adapters(dense, adapters);
  qh::TrainingSequences seq = qh::load_training_sequences(*tok, ctx.data, seqlen, 0);
  auto baseline = [&](int64_t i) {
    const int64_t n = seq.ids.size(0), first = (i * batch) % n;
    at::Tensor ids = seq.ids.narrow(0, first, std::min(batch, n - first));
    at::Tensor labels = seq.labels.narrow(0, first, ids.size(0));
    at::AutoGradMode grad(true);
    at::Tensor z = dense.forward(ids);
    const int64_t T = z.size(1);
    at::cross_entropy_loss(z.narrow(1, 0, T - 1).reshape({-1, z.size(2)}),
                           labels.narrow(1, 1, T - 1).reshape({-1}))
        .backward();
  };

  auto time = [&](auto&& f) {
    f(0);  // warm-up
    const auto t0 = Clock::now();
    for (int64_t i = 1; i <= iters; ++i) f(i);
    return seconds_since(t0);
  };
  const double s_base = time(baseline);
  const double s_ours = time(ours);
  t->trainer_destroy(trainer);
  const double tokens = static_cast<double>(iters * batch * seqlen);
  fmt::print("training forward+backward, {} x {} tokens per batch, {} batches, {} threads\n", batch,
             seqlen, iters, at::get_num_threads());
  fmt::print("  qforge trainer, packed layers + plugin adapters  {:>10.0f} tokens/s\n", tokens / s_ours);
  fmt::print("  LibTorch autograd, dequantized + LoRA as ops     {:>10.0f} tokens/s  (baseline)\n",
             tokens / s_base);
  fmt::print("  ratio {:.2f}x\n", s_base / s_ours);
  return 0;
}
