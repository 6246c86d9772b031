// The host's qforge.host.train (sdk/include/qforge/ext/train.h): a trainer
// over the whole model, its data, teacher, losses, AdamW and checkpoints.
#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include <qforge/cpp/torch.hpp>

#include "internal.hpp"
#include "qforge_host/base/digest.hpp"
#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/progress.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/plugins/services.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {
namespace {

// The teacher's logits kept on disk as each token's top-k log-probabilities
// at temperature τ, their vocabulary indices, and the log of the remaining
// mass; memory-mapped.
struct TeacherCache {
  at::Tensor logp;  // [N, T, k] float32
  at::Tensor index; // [N, T, k] int32
  at::Tensor rest;  // [N, T] float32
  double temperature = 1;
};

// The fraction of the peak rate at update t (from 0): HF's
// get_linear_schedule_with_warmup, or get_cosine_schedule_with_warmup.
double schedule_factor(int32_t shape, uint64_t t, uint64_t warmup, uint64_t total) {
  if (t < warmup) return static_cast<double>(t) / static_cast<double>(warmup);
  if (total == 0) return 1.0;
  if (t >= total) return 0.0;
  const double progress = static_cast<double>(t - warmup) / static_cast<double>(std::max<uint64_t>(1, total - warmup));
  if (shape == QFORGE_SCHEDULE_COSINE) return 0.5 * (1.0 + std::cos(M_PI * progress));
  return 1.0 - progress;
}

// How often training is checkpointed: QFORGE_TRAIN_CHECKPOINT_SECONDS
// (default 10; 0 = at every update).
std::chrono::duration<double> checkpoint_interval() {
  static const double seconds = [] {
    const char* v = std::getenv("QFORGE_TRAIN_CHECKPOINT_SECONDS");
    char* end = nullptr;
    const double s = v ? std::strtod(v, &end) : 10.0;
    return (v && (end == v || *end != '\0' || !(s >= 0))) ? 10.0 : s;
  }();
  return std::chrono::duration<double>(seconds);
}

const char* loss_name(int32_t kind) {
  switch (kind) {
    case QFORGE_LOSS_CROSS_ENTROPY: return "cross-entropy";
    case QFORGE_LOSS_KL_TEACHER: return "kl";
    case QFORGE_LOSS_MSE_TEACHER_LOGITS: return "logits-mse";
    case QFORGE_LOSS_MSE_TEACHER_BLOCKS: return "block-mse";
    case QFORGE_LOSS_MSE_BLOCK_TARGET: return "block-target-mse";
    case QFORGE_LOSS_MSE_WINDOW_TARGET: return "window-target-mse";
    default: return "?";
  }
}

}  // namespace
}  // namespace qforge::host

using namespace qforge::host;

struct qforge_trainer {
  ModelServices::Impl& ms;
  qforge_train_config cfg{};
  TrainingSequences data;
  std::shared_ptr<Model> teacher;  // the services' (one load for every trainer of a run)
  std::unique_ptr<TeacherCache> cache;
  struct Slot {
    TrainableTensor* param;
    std::string key;  // "<layer>/<name>"
    at::Tensor m, v;
  };
  std::vector<Slot> slots;
  std::vector<size_t> tuned;  // the linears whose parameters this trainer trains
  std::vector<at::Tensor> kept;  // keep_state's copies, slot by slot
  uint64_t warmup_steps = 0, total_steps = 0;  // the schedule
  int32_t shape = QFORGE_SCHEDULE_LINEAR;
  uint64_t steps = 0;    // optimizer updates done
  uint64_t position = 0; // micro-batches done (as last saved or restored)
  std::chrono::steady_clock::time_point last_save = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  uint64_t start_steps = 0;
  int64_t tokens = 0;            // counted tokens trained on in this process
  std::vector<double> loss_sum;  // per term kind since the last report
  std::vector<std::string> loss_names;
  double total_sum = 0;
  int64_t loss_batches = 0;
  std::unique_ptr<ProgressLine> progress;
  uint64_t next_report = 0;

  qforge_trainer(ModelServices::Impl& s, const qforge_train_config& c);
  ~qforge_trainer() { ms.mode = TrainMode{}; ms.trainer_alive = false; }

  // Training sequences (the held-out ones excluded).
  int64_t sequences() const {
    return ms.scope ? ms.scope->inputs.size(0) : data.ids.size(0) - static_cast<int64_t>(cfg.holdout);
  }
  double block_loss(const at::Tensor& rows, const qforge_loss_term* const* terms, uint32_t count,
                    double scale, double* values, bool train);
  double model_loss(const at::Tensor& rows, const qforge_loss_term* const* terms, uint32_t count,
                    double scale, double* values, bool train);
  at::Tensor window_loss(const at::Tensor& ids, const at::Tensor& labels, const qforge_loss_term& t);
  void evaluate(const qforge_loss_term* const* terms, uint32_t count, double* values);
  void keep();
  void revert();
  void update_layers() { for (size_t i : tuned) ms.packed[i]->update(); }
  void gather_slots();
  at::Tensor batch_rows(uint64_t epoch, uint64_t index) const;
  double loss_backward(uint64_t epoch, uint64_t index, const qforge_loss_term* const* terms,
                       uint32_t count, double scale, double* values);
  double step();
  void save(uint64_t position, bool force);
  uint64_t restore();
  void build_cache();
  std::string state_file() const { return (fs::path(ms.context.state_dir) / "train-state.safetensors").string(); }
};

qforge_trainer::qforge_trainer(ModelServices::Impl& s, const qforge_train_config& c) : ms(s) {
  // A smaller table (an older plugin) leaves the newer fields zero.
  std::memcpy(&cfg, &c, std::min<size_t>(c.struct_size, sizeof cfg));
  cfg.struct_size = sizeof cfg;
  if (cfg.batch_size < 1) throw UsageError("training: batch_size must be at least 1");
  if (!(cfg.lr >= 0) || !(cfg.weight_decay >= 0) || !(cfg.beta1 >= 0 && cfg.beta1 < 1) ||
      !(cfg.beta2 >= 0 && cfg.beta2 < 1) || !(cfg.eps > 0) || !(cfg.max_grad_norm >= 0))
    throw UsageError("training: lr, weight_decay, betas in [0, 1), eps > 0 and max_grad_norm >= 0 are required");
  const auto& mc = ms.model.config();
  int64_t length = cfg.max_length ? static_cast<int64_t>(cfg.max_length) : 0;
  if (length == 0 || length > mc.max_position_embeddings) {
    if (length > mc.max_position_embeddings)
      log(LogLevel::info, "training: max_length {} is cut to the model's {} positions", length,
          mc.max_position_embeddings);
    length = std::min<int64_t>(mc.max_position_embeddings, length ? length : 1024);
  }
  if (ms.scope != nullptr) {  // a block: its calibration inputs and targets are the data
    log(LogLevel::debug, "training block {} on {} sequences", ms.scope->block, sequences());
    return;
  }
  if (ms.context.data.file.empty())
    throw UsageError("training needs data: give --train-data FILE (text, JSONL or CSV)");
  if (ms.context.tokenizer == nullptr) throw UsageError("training needs the model's tokenizer");
  data = load_training_sequences(*ms.context.tokenizer, ms.context.data, length,
                                 static_cast<int64_t>(cfg.max_samples));
  log(LogLevel::info, "training data: {}", data.description);
  if (cfg.holdout > 0 && static_cast<int64_t>(cfg.holdout) >= data.ids.size(0))
    throw UsageError(fmt::format("training: {} held-out sequences leave none of the {} to train on",
                                 cfg.holdout, data.ids.size(0)));
  if (cfg.teacher) {
    if (ms.context.teacher_dir.empty())
      throw UsageError("this post-process needs a teacher (the unquantized model): give --teacher DIR");
    if (!ms.teacher) ms.teacher = std::make_shared<Model>(Model::load(ms.context.teacher_dir, at::kFloat));
    teacher = ms.teacher;
    const auto& tc = teacher->config();
    if (tc.vocab_size != mc.vocab_size || tc.hidden_size != mc.hidden_size ||
        tc.num_layers != mc.num_layers)
      throw UsageError(fmt::format("teacher {}: its vocabulary, hidden size or block count differs "
                                   "from the model's", ms.context.teacher_dir));
    if (cfg.teacher_top_k > 0) build_cache();
  }
}

at::Tensor qforge_trainer::batch_rows(uint64_t epoch, uint64_t index) const {
  const int64_t n = sequences(), B = static_cast<int64_t>(cfg.batch_size);
  if (static_cast<int64_t>(index) * B >= n)
    throw UsageError(fmt::format("training: batch {} is beyond the {} batches of an epoch", index,
                                 (n + B - 1) / B));
  // The epoch's order: a Fisher-Yates shuffle drawn from (seed, epoch).
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  qforge::host::detail::CalibrationRng rng(cfg.shuffle_seed * 1000003u + epoch);
  for (int64_t i = n - 1; i > 0; --i)
    std::swap(order[i], order[static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
  const int64_t first = static_cast<int64_t>(index) * B, count = std::min(B, n - first);
  return at::tensor(std::vector<int64_t>(order.begin() + first, order.begin() + first + count),
                    at::kLong);
}

// The trainable tensors: every adapter's, then every tuned layer's.
void qforge_trainer::gather_slots() {
  std::vector<std::pair<TrainableTensor*, std::string>> want;
  for (Linear* l : ms.linears) {
    auto it = ms.adapters.find(l->name);
    if (it == ms.adapters.end()) continue;
    for (auto& p : it->second->params()) want.emplace_back(&p, l->name + "/" + p.name);
  }
  for (size_t i : tuned)
    for (auto& p : ms.packed[i]->tune(ms.linears[i]->name))
      want.emplace_back(&p, ms.linears[i]->name + "/" + p.name);
  bool same = want.size() == slots.size();
  for (size_t k = 0; same && k < want.size(); ++k) same = want[k].first == slots[k].param;
  if (same) return;
  // Slots already there keep their optimizer state.
  std::map<TrainableTensor*, Slot> before;
  for (Slot& s : slots) before.emplace(s.param, std::move(s));
  slots.clear();
  kept.clear();
  for (auto& [p, key] : want) {
    if (auto it = before.find(p); it != before.end())
      slots.push_back(std::move(it->second));
    else
      slots.push_back({p, key, at::zeros_like(p->value), at::zeros_like(p->value)});
  }
}

void qforge_trainer::build_cache() {
  const int64_t N = data.ids.size(0), T = data.ids.size(1);
  const int64_t k = std::min<int64_t>(cfg.teacher_top_k, teacher->config().vocab_size);
  const double tau = cfg.teacher_cache_temperature > 0 ? cfg.teacher_cache_temperature : 1.0;
  const std::string key = text_digest(fmt::format(
      "{}|{}|{}|{}|{}|{}", ms.context.teacher_dir, text_digest(json(model_files_identity(ms.context.teacher_dir)).dump()),
      file_digest(ms.context.data.file), T, k, tau)).substr(0, 16);
  const fs::path dir = ms.context.state_dir.empty()
                           ? fs::temp_directory_path() / fmt::format("qforge-teacher-{}", key)
                           : fs::path(ms.context.state_dir) / fmt::format("teacher-top{}-{}", k, key);
  const fs::path done = dir / "complete";
  cache = std::make_unique<TeacherCache>();
  cache->temperature = tau;
  if (!fs::exists(done)) {
    fs::create_directories(dir);
    at::Tensor logp = at::empty({N, T, k}, at::kFloat), index = at::empty({N, T, k}, at::kInt),
               rest = at::empty({N, T}, at::kFloat);
    ProgressLine line("teacher top-k cache", "sequences");
    at::NoGradGuard no_grad;
    for (int64_t i = 0; i < N; ++i) {
      at::Tensor z = teacher->forward(data.ids.narrow(0, i, 1))[0] / tau;  // [T, V]
      at::Tensor lp = at::log_softmax(z, -1);
      auto [top, idx] = lp.topk(k, -1);
      logp[i].copy_(top);
      index[i].copy_(idx.to(at::kInt));
      // log(1 − Σ top-k p), kept finite when the top k hold (almost) everything
      rest[i].copy_(at::log1p(-top.exp().sum(-1).clamp_max(1 - 1e-7)));
      line.update(i + 1, N);
      if (services()->is_cancelled(services())) throw Cancelled("interrupted while caching the teacher");
    }
    auto write = [&](const char* name, const at::Tensor& t) {
      std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
      f.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
      if (!f) throw IoError(fmt::format("could not write {}", (dir / name).string()));
    };
    write("logp.f32", logp);
    write("index.i32", index);
    write("rest.f32", rest);
    std::ofstream(done) << "ok\n";
  }
  auto map = [&](const char* name, at::IntArrayRef shape, at::ScalarType dt) {
    const int64_t numel = c10::multiply_integers(shape);
    return at::from_file((dir / name).string(), false, numel, at::TensorOptions().dtype(dt)).view(shape);
  };
  cache->logp = map("logp.f32", {N, T, k}, at::kFloat);
  cache->index = map("index.i32", {N, T, k}, at::kInt);
  cache->rest = map("rest.f32", {N, T}, at::kFloat);
  log(LogLevel::info, "teacher: top-{} log-probabilities at temperature {} of {} sequences cached in {} ({:.1f} MiB)",
      k, tau, N, dir.string(), (N * T * (8 * k + 4)) / 1048576.0);
  // The cache stands in for the teacher (block losses need it live: kept then).
  teacher.reset();
  ms.teacher.reset();
}

double qforge_trainer::loss_backward(uint64_t epoch, uint64_t index,
                                     const qforge_loss_term* const* terms, uint32_t count,
                                     double scale, double* values) {
  if (services()->is_cancelled(services())) throw Cancelled("training interrupted");
  gather_slots();
  const at::Tensor rows = batch_rows(epoch, index);
  ms.mode.seed = (cfg.shuffle_seed * 0x9E3779B97F4A7C15ull) ^ (epoch << 32) ^ index;
  if (ms.scope) return block_loss(rows, terms, count, scale, values, /*train=*/true);
  return model_loss(rows, terms, count, scale, values, /*train=*/true);
}

// The student's blocks [b0, b0 + n) on its own input to b0, against the
// teacher's same blocks on that input; every real token counts.
at::Tensor qforge_trainer::window_loss(const at::Tensor& ids, const at::Tensor& labels,
                                       const qforge_loss_term& t) {
  const int64_t nb = static_cast<int64_t>(ms.model.blocks().size());
  if (t.blocks == nullptr || t.block_count < 1)
    throw UsageError("loss window-target-mse: blocks[0] (the first block) and block_count (>= 1) are required");
  const int64_t b0 = t.blocks[0], n = t.block_count;
  if (b0 < 0 || b0 + n > nb)
    throw UsageError(fmt::format("loss window-target-mse: blocks {}..{} are not in the model's {}",
                                 b0, b0 + n - 1, nb));
  if (!teacher) throw UsageError("loss window-target-mse needs the live teacher");
  at::Tensor x, target;
  {
    at::NoGradGuard no_grad;
    const bool training = ms.mode.training;
    ms.mode.training = false;
    x = ms.model.embed(ids);
    for (int64_t b = 0; b < b0; ++b) x = ms.model.block_forward(b, x, 0, nullptr);
    ms.mode.training = training;
    target = x;
    for (int64_t b = b0; b < b0 + n; ++b) target = teacher->block_forward(b, target, 0, nullptr);
  }
  at::Tensor h = x;
  for (int64_t b = b0; b < b0 + n; ++b) h = ms.model.block_forward(b, h, 0, nullptr);
  const at::Tensor real = (labels != -100).to(at::kFloat);
  const double n_real = std::max(1.0, real.sum().item<double>());
  return ((h.to(at::kFloat) - target.to(at::kFloat)).pow(2).mean(-1) * real).sum() / n_real;
}

double qforge_trainer::model_loss(const at::Tensor& rows, const qforge_loss_term* const* terms,
                                  uint32_t count, double scale, double* values, bool train) {
  const at::Tensor ids = data.ids.index_select(0, rows), labels = data.labels.index_select(0, rows);
  const int64_t V = ms.model.config().vocab_size, nb = static_cast<int64_t>(ms.model.blocks().size());
  std::optional<at::NoGradGuard> no_grad;
  if (!train) no_grad.emplace();
  auto record = [&](uint32_t i, double value) {
    if (!train) return;
    if (loss_sum.size() < count) {
      loss_sum.assign(count, 0.0);
      loss_names.clear();
      for (uint32_t j = 0; j < count; ++j) loss_names.push_back(loss_name(terms[j]->kind));
    }
    loss_sum[i] += value;
  };

  // Window terms: the window alone runs with gradients.
  uint32_t windows = 0;
  for (uint32_t i = 0; i < count; ++i)
    windows += terms[i]->struct_size >= sizeof(qforge_loss_term) && terms[i]->kind == QFORGE_LOSS_MSE_WINDOW_TARGET;
  if (windows > 0) {
    if (windows != count)
      throw UsageError("loss window-target-mse cannot be mixed with other losses in one call");
    if (!cfg.teacher) throw UsageError("loss window-target-mse needs the teacher (train config: teacher = true)");
    at::AutoGradMode grad(train);
    ms.mode.training = train;
    at::Tensor total = at::zeros({}, at::kFloat);
    for (uint32_t i = 0; i < count; ++i) {
      const at::Tensor L = window_loss(ids, labels, *terms[i]);
      const double value = L.item<double>();
      if (!std::isfinite(value)) throw UsageError("training: the window loss is not finite (lower lr?)");
      if (values) values[i] = value;
      record(i, value);
      total = total + L * terms[i]->weight;
    }
    if (train) (total * scale).backward();
    ms.mode.training = false;
    const double value = total.item<double>();
    if (train) {
      tokens += (labels != -100).sum().item<int64_t>();
      total_sum += value;
      ++loss_batches;
    }
    return value;
  }

  // Which outputs the terms need.
  bool need_teacher_logits = false;
  std::vector<bool> want_block(nb, false);
  for (uint32_t i = 0; i < count; ++i) {
    const qforge_loss_term& t = *terms[i];
    if (t.struct_size < sizeof(qforge_loss_term)) throw UsageError("loss term: struct_size too small");
    switch (t.kind) {
      case QFORGE_LOSS_CROSS_ENTROPY: break;
      case QFORGE_LOSS_KL_TEACHER:
        if (!(t.temperature > 0)) throw UsageError("loss kl: the temperature must be > 0");
        if (cache && std::abs(t.temperature - cache->temperature) > 1e-12)
          throw UsageError(fmt::format("loss kl: temperature {} differs from the cached teacher's {}",
                                       t.temperature, cache->temperature));
        need_teacher_logits |= !cache;
        break;
      case QFORGE_LOSS_MSE_TEACHER_LOGITS: need_teacher_logits = true; break;
      case QFORGE_LOSS_MSE_TEACHER_BLOCKS:
        if (t.blocks == nullptr) {
          std::fill(want_block.begin(), want_block.end(), true);
        } else {
          for (uint32_t j = 0; j < t.block_count; ++j) {
            if (t.blocks[j] >= static_cast<uint32_t>(nb))
              throw UsageError(fmt::format("loss block-mse: no block {}", t.blocks[j]));
            want_block[t.blocks[j]] = true;
          }
        }
        break;
      case QFORGE_LOSS_MSE_BLOCK_TARGET:
        throw UsageError("loss block-target-mse trains a block inside run_block only");
      case QFORGE_LOSS_MSE_WINDOW_TARGET: break;  // (not mixed: above)
      default: throw UsageError(fmt::format("unknown loss kind {}", t.kind));
    }
    if (t.kind != QFORGE_LOSS_CROSS_ENTROPY && !cfg.teacher)
      throw UsageError(fmt::format("loss {} needs the teacher (train config: teacher = true)", loss_name(t.kind)));
    if (t.kind != QFORGE_LOSS_CROSS_ENTROPY && t.kind != QFORGE_LOSS_KL_TEACHER && !teacher)
      throw UsageError(fmt::format("loss {} needs the live teacher; the top-k cache holds logits "
                                   "for the KL loss only", loss_name(t.kind)));
  }

  // The teacher, without gradients.
  at::Tensor zt;
  std::vector<at::Tensor> ht(nb);
  if (teacher && (need_teacher_logits || std::count(want_block.begin(), want_block.end(), true))) {
    at::NoGradGuard no_grad;
    at::Tensor h = teacher->embed(ids);
    for (int64_t b = 0; b < nb; ++b) {
      h = teacher->block_forward(b, h, 0, nullptr);
      if (want_block[b]) ht[b] = h;
    }
    if (need_teacher_logits) zt = teacher->head(h);
  }

  // The student, with gradients (adapters in training mode, seeded per batch).
  at::AutoGradMode grad(train);
  ms.mode.training = train;
  std::vector<at::Tensor> hs(nb);
  at::Tensor h = ms.model.embed(ids);
  for (int64_t b = 0; b < nb; ++b) {
    h = ms.model.block_forward(b, h, 0, nullptr);
    if (want_block[b]) hs[b] = h;
  }
  at::Tensor z = ms.model.head(h);  // [B, T, V] float32

  // Position t predicts token t+1; it counts when that token is not padding.
  const int64_t T = ids.size(1);
  at::Tensor target = labels.narrow(1, 1, T - 1);
  at::Tensor counted = (target != -100).to(at::kFloat);  // [B, T-1]
  const double n_counted = std::max(1.0, counted.sum().item<double>());
  at::Tensor zs = z.narrow(1, 0, T - 1);
  auto masked_mean = [&](const at::Tensor& per_token) { return (per_token * counted).sum() / n_counted; };

  at::Tensor total = at::zeros({}, at::kFloat);
  for (uint32_t i = 0; i < count; ++i) {
    const qforge_loss_term& t = *terms[i];
    at::Tensor L;
    switch (t.kind) {
      case QFORGE_LOSS_CROSS_ENTROPY:
        L = at::cross_entropy_loss(zs.reshape({-1, V}), target.reshape({-1}), {},
                                   at::Reduction::Sum, -100) / n_counted;
        break;
      case QFORGE_LOSS_KL_TEACHER: {
        const double tau = t.temperature;
        at::Tensor ls = at::log_softmax(zs / tau, -1);
        at::Tensor per_token;
        if (cache) {
          at::Tensor lp = cache->logp.index_select(0, rows).narrow(1, 0, T - 1);
          at::Tensor ix = cache->index.index_select(0, rows).narrow(1, 0, T - 1).to(at::kLong);
          at::Tensor rest = cache->rest.index_select(0, rows).narrow(1, 0, T - 1);
          at::Tensor lq = ls.gather(-1, ix);
          at::Tensor q_rest = at::log1p(-lq.exp().sum(-1).clamp_max(1 - 1e-7));
          per_token = (lp.exp() * (lp - lq)).sum(-1) + rest.exp() * (rest - q_rest);
        } else {
          at::Tensor lt = at::log_softmax(zt.narrow(1, 0, T - 1) / tau, -1);
          per_token = (lt.exp() * (lt - ls)).sum(-1);
        }
        L = masked_mean(per_token) * (tau * tau);
        break;
      }
      case QFORGE_LOSS_MSE_TEACHER_LOGITS:
        L = masked_mean((zs - zt.narrow(1, 0, T - 1)).pow(2).mean(-1));
        break;
      case QFORGE_LOSS_MSE_TEACHER_BLOCKS: {
        // Every real token's hidden state counts (padding does not).
        at::Tensor real = (labels != -100).to(at::kFloat);
        const double n_real = std::max(1.0, real.sum().item<double>());
        std::vector<uint32_t> which;
        if (t.blocks == nullptr)
          for (int64_t b = 0; b < nb; ++b) which.push_back(static_cast<uint32_t>(b));
        else
          which.assign(t.blocks, t.blocks + t.block_count);
        L = at::zeros({}, at::kFloat);
        for (uint32_t b : which)
          L = L + ((hs[b].to(at::kFloat) - ht[b]).pow(2).mean(-1) * real).sum() / n_real;
        if (!which.empty()) L = L / static_cast<double>(which.size());
        break;
      }
    }
    const double value = L.item<double>();
    if (!std::isfinite(value))
      throw UsageError(fmt::format("training: the {} loss is not finite (lower lr?)", loss_name(t.kind)));
    if (values) values[i] = value;
    record(i, value);
    total = total + L * t.weight;
  }
  ms.mode.training = false;
  if (!train) return total.item<double>();
  (total * scale).backward();
  tokens += static_cast<int64_t>(n_counted);
  total_sum += total.item<double>();
  ++loss_batches;
  return total.item<double>();
}

// Block scope: the block on its calibration inputs against the unquantized
// block's outputs (every position counts: calibration windows have no padding).
double qforge_trainer::block_loss(const at::Tensor& rows, const qforge_loss_term* const* terms,
                                  uint32_t count, double scale, double* values, bool train) {
  const size_t b = ms.scope->block;
  const at::Tensor x = ms.scope->inputs.index_select(0, rows).to(at::kFloat);
  const at::Tensor target = ms.scope->targets.index_select(0, rows).to(at::kFloat);
  at::AutoGradMode grad(train);
  ms.mode.training = train;
  const at::Tensor L = (ms.model.block_forward(b, x, 0, nullptr) - target).pow(2).mean();
  at::Tensor total = at::zeros({}, at::kFloat);
  for (uint32_t i = 0; i < count; ++i) {
    const qforge_loss_term& t = *terms[i];
    if (t.struct_size < sizeof(qforge_loss_term)) throw UsageError("loss term: struct_size too small");
    if (t.kind != QFORGE_LOSS_MSE_BLOCK_TARGET)
      throw UsageError(fmt::format("loss {} is not available in run_block (only block-target-mse)",
                                   loss_name(t.kind)));
    if (values) values[i] = L.item<double>();
    total = total + L * t.weight;
  }
  const double value = total.item<double>();
  if (!std::isfinite(value)) throw UsageError("training: the block loss is not finite (lower lr?)");
  ms.mode.training = false;
  if (!train) return value;
  (total * scale).backward();
  tokens += x.size(0) * x.size(1);
  if (loss_sum.size() != 1) {
    loss_sum.assign(1, 0.0);
    loss_names = {"block-target-mse"};
  }
  loss_sum[0] += L.item<double>();
  total_sum += value;
  ++loss_batches;
  return value;
}

// Without gradients: a block's every calibration sequence, or the model's
// held-out ones; each term's mean over the sequences (weighted by their rows).
void qforge_trainer::evaluate(const qforge_loss_term* const* terms, uint32_t count, double* values) {
  const int64_t first = ms.scope ? 0 : sequences();
  const int64_t n = ms.scope ? ms.scope->inputs.size(0) : data.ids.size(0);
  if (n - first < 1)
    throw UsageError("evaluate: no held-out sequences (train config: holdout >= 1)");
  std::vector<double> sum(count, 0.0), part(count, 0.0);
  const int64_t B = static_cast<int64_t>(cfg.batch_size);
  for (int64_t r = first; r < n; r += B) {
    const int64_t m = std::min(B, n - r);
    const at::Tensor rows = at::arange(r, r + m, at::kLong);
    if (ms.scope)
      block_loss(rows, terms, count, 1.0, part.data(), /*train=*/false);
    else
      model_loss(rows, terms, count, 1.0, part.data(), /*train=*/false);
    for (uint32_t i = 0; i < count; ++i) sum[i] += part[i] * static_cast<double>(m);
    if (services()->is_cancelled(services())) throw Cancelled("training interrupted");
  }
  for (uint32_t i = 0; i < count; ++i) values[i] = sum[i] / static_cast<double>(n - first);
}

void qforge_trainer::keep() {
  gather_slots();
  kept.clear();
  for (const Slot& s : slots) kept.push_back(s.param->value.clone());
}

void qforge_trainer::revert() {
  gather_slots();
  if (kept.size() != slots.size()) throw UsageError("revert_state: no state was kept (keep_state)");
  for (size_t k = 0; k < slots.size(); ++k) slots[k].param->value.copy_(kept[k]);
  update_layers();
}

double qforge_trainer::step() {
  gather_slots();
  const double factor = schedule_factor(shape, steps, warmup_steps, total_steps);
  const double lr = cfg.lr * factor;
  // Global-norm clipping (as torch.nn.utils.clip_grad_norm_).
  if (cfg.max_grad_norm > 0) {
    double sq = 0;
    for (auto& s : slots) sq += s.param->grad.pow(2).sum().item<double>();
    const double norm = std::sqrt(sq);
    if (norm > cfg.max_grad_norm)
      for (auto& s : slots) s.param->grad.mul_(cfg.max_grad_norm / (norm + 1e-6));
  }
  // AdamW (Loshchilov & Hutter 2019, Algorithm 2), as torch.optim.AdamW.
  ++steps;
  const double bc1 = 1 - std::pow(cfg.beta1, static_cast<double>(steps));
  const double bc2 = 1 - std::pow(cfg.beta2, static_cast<double>(steps));
  for (auto& s : slots) {
    at::Tensor& p = s.param->value;
    at::Tensor& g = s.param->grad;
    const double rate = s.param->lr >= 0 ? s.param->lr * factor : lr;
    if (cfg.weight_decay > 0) p.mul_(1 - rate * cfg.weight_decay);
    s.m.mul_(cfg.beta1).add_(g, 1 - cfg.beta1);
    s.v.mul_(cfg.beta2).addcmul_(g, g, 1 - cfg.beta2);
    at::Tensor denom = (s.v / bc2).sqrt_().add_(cfg.eps);
    p.addcdiv_(s.m, denom, -rate / bc1);
    g.zero_();
  }
  update_layers();  // the layers use their new parameters
  // Progress: a line with the ETA, and the losses every tenth of the run.
  if (!progress && !ms.scope) progress = std::make_unique<ProgressLine>("training", "steps");
  if (progress && total_steps > 0) progress->update(static_cast<int64_t>(steps), static_cast<int64_t>(total_steps));
  const uint64_t every = std::max<uint64_t>(1, total_steps / 10);
  if (steps >= next_report && loss_batches > 0) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::string parts;
    for (size_t i = 0; i < loss_sum.size(); ++i)
      parts += fmt::format("{}{} {:.4f}", i ? ", " : "", loss_names[i], loss_sum[i] / loss_batches);
    log(ms.scope ? LogLevel::debug : LogLevel::info,
        "training: step {}/{}, loss {:.4f} ({}), lr {:.3g}, {:.0f} tokens/s", steps,
        total_steps, total_sum / loss_batches, parts, lr, secs > 0 ? tokens / secs : 0.0);
    std::fill(loss_sum.begin(), loss_sum.end(), 0.0);
    total_sum = 0;
    loss_batches = 0;
    next_report = steps + every;
  }
  return lr;
}

void qforge_trainer::save(uint64_t pos, bool force) {
  if (ms.context.state_dir.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  if (!force && now - last_save < checkpoint_interval()) return;
  gather_slots();
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (auto& s : slots) {
    tensors.emplace_back(s.key, s.param->value);
    tensors.emplace_back(s.key + "#m", s.m);
    tensors.emplace_back(s.key + "#v", s.v);
  }
  fs::create_directories(ms.context.state_dir);
  save_safetensors(state_file(), tensors,
                   {{"identity", ms.context.identity}, {"position", std::to_string(pos)},
                    {"steps", std::to_string(steps)}});
  position = pos;
  last_save = now;
}

uint64_t qforge_trainer::restore() {
  gather_slots();
  if (!ms.context.resume || ms.context.state_dir.empty() || !fs::exists(state_file())) return 0;
  SafetensorsFile f(state_file());
  const auto& meta = f.metadata();
  auto get = [&](const char* key) {
    auto it = meta.find(key);
    if (it == meta.end()) throw ModelFileError(fmt::format("{}: no '{}' in its metadata", state_file(), key));
    return it->second;
  };
  if (get("identity") != ms.context.identity)
    throw UsageError(fmt::format("{} was written by a different post-process run (other parameters, "
                                 "data or model); remove it to start again", state_file()));
  for (auto& s : slots) {
    for (auto [suffix, dst] : {std::pair<const char*, at::Tensor*>{"", &s.param->value},
                               {"#m", &s.m}, {"#v", &s.v}}) {
      const std::string name = s.key + suffix;
      if (!f.contains(name)) throw ModelFileError(fmt::format("{}: no tensor '{}'", state_file(), name));
      at::Tensor t = f.view(name);
      if (t.sizes() != dst->sizes() || t.scalar_type() != at::kFloat)
        throw ModelFileError(fmt::format("{}: tensor '{}' has another shape or dtype", state_file(), name));
      dst->copy_(t);
    }
  }
  if (f.tensors().size() != slots.size() * 3)
    throw ModelFileError(fmt::format("{}: holds adapters this run did not attach", state_file()));
  update_layers();
  steps = std::stoull(get("steps"));
  position = std::stoull(get("position"));
  next_report = steps;
  log(LogLevel::info, "training: resumed at step {} (micro-batch {}) from {}", steps, position, state_file());
  return position;
}

namespace qforge::host {
namespace {

template <class F>
qforge_status* call(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const Cancelled& e) {
    const qforge_host* h = services();
    return h->status_create(h, QFORGE_STATUS_CANCELLED, e.what());
  } catch (const PluginError& e) {
    const qforge_host* h = services();
    return h->status_create(h, e.code(), e.what());
  } catch (const UsageError& e) {
    const qforge_host* h = services();
    return h->status_create(h, QFORGE_STATUS_INVALID_ARGUMENT, e.what());
  } catch (const IoError& e) {
    const qforge_host* h = services();
    return h->status_create(h, QFORGE_STATUS_IO, e.what());
  } catch (...) {
    return guard(services(), [] { throw; });
  }
}

qforge_status* trainer_create(const qforge_model_services* model, const qforge_train_config* config,
                              qforge_trainer** trainer) {
  return call([&] {
    if (model == nullptr || config == nullptr || trainer == nullptr)
      throw UsageError("trainer_create: NULL argument");
    auto& s = *static_cast<ModelServices::Impl*>(model->host_data);
    if (s.trainer_alive) throw UsageError("trainer_create: a trainer already exists");
    *trainer = new qforge_trainer(s, *config);
    s.trainer_alive = true;
  });
}

void trainer_destroy(qforge_trainer* t) { delete t; }

qforge_status* attach_adapter(qforge_trainer* t, const char* layer, qforge_adapter* adapter,
                              const qforge_adapter_vtable* vt) {
  return call([&] {
    if (t == nullptr || layer == nullptr) {
      if (adapter && vt && vt->destroy) vt->destroy(adapter);
      throw UsageError("attach_adapter: NULL argument");
    }
    t->ms.attach(layer, adapter, vt);
  });
}

qforge_status* set_schedule(qforge_trainer* t, uint64_t warmup, uint64_t total) {
  return call([&] {
    if (total > 0 && warmup > total) throw UsageError("set_schedule: more warm-up steps than steps");
    t->warmup_steps = warmup;
    t->total_steps = total;
  });
}

// Layer `layer` tuned by trainer t (and recorded in the services, which
// store it when the post-process is done).
size_t tune(qforge_trainer* t, const char* layer) {
  if (t == nullptr || layer == nullptr) throw UsageError("tune_layer: NULL argument");
  ModelServices::Impl& s = t->ms;
  const size_t i = s.index_of(layer);
  if (!s.packed[i]) throw UsageError(fmt::format("{} is not packed: nothing to tune", layer));
  s.packed[i]->tune(layer);  // refuses a layer without tunable parameters
  if (std::find(s.tuned.begin(), s.tuned.end(), i) == s.tuned.end()) s.tuned.push_back(i);
  if (std::find(t->tuned.begin(), t->tuned.end(), i) == t->tuned.end()) t->tuned.push_back(i);
  return i;
}

qforge_status* tune_layer(qforge_trainer* t, const char* layer) {
  return call([&] { tune(t, layer); });
}

qforge_status* tune_layer_codes(qforge_trainer* t, const char* layer, double lr) {
  return call([&] {
    if (!(lr >= 0)) throw UsageError("tune_layer_codes: lr must be >= 0");
    const size_t i = tune(t, layer);
    t->ms.packed[i]->tune_codes(layer, lr);
  });
}

qforge_status* set_schedule_shape(qforge_trainer* t, int32_t shape) {
  return call([&] {
    if (shape != QFORGE_SCHEDULE_LINEAR && shape != QFORGE_SCHEDULE_COSINE)
      throw UsageError(fmt::format("set_schedule_shape: unknown shape {}", shape));
    t->shape = shape;
  });
}

qforge_status* evaluate(qforge_trainer* t, const qforge_loss_term* const* terms, uint32_t count,
                        double* values) {
  return call([&] {
    if ((terms == nullptr || values == nullptr) && count > 0) throw UsageError("evaluate: NULL argument");
    t->evaluate(terms, count, values);
  });
}

qforge_status* keep_state(qforge_trainer* t) { return call([&] { t->keep(); }); }
qforge_status* revert_state(qforge_trainer* t) { return call([&] { t->revert(); }); }

uint64_t batch_count(const qforge_trainer* t) {
  return (static_cast<uint64_t>(t->sequences()) + t->cfg.batch_size - 1) / t->cfg.batch_size;
}

qforge_status* loss_backward(qforge_trainer* t, uint64_t epoch, uint64_t index,
                             const qforge_loss_term* const* terms, uint32_t count, double scale,
                             double* values) {
  return call([&] {
    if (terms == nullptr && count > 0) throw UsageError("loss_backward: NULL terms");
    t->loss_backward(epoch, index, terms, count, scale, values);
  });
}

qforge_status* step(qforge_trainer* t, double* lr) {
  return call([&] {
    const double used = t->step();
    if (lr) *lr = used;
  });
}

qforge_status* save_state(qforge_trainer* t, uint64_t position, qforge_bool force) {
  return call([&] { t->save(position, force != 0); });
}

qforge_status* restore_state(qforge_trainer* t, uint64_t* position) {
  return call([&] {
    const uint64_t p = t->restore();
    if (position) *position = p;
  });
}

}  // namespace

const qforge_host_train* host_train_table() {
  static const qforge_host_train table = {
      sizeof(qforge_host_train), 0, &trainer_create, &trainer_destroy, &attach_adapter,
      &batch_count, &set_schedule, &loss_backward, &step, &save_state, &restore_state,
      &tune_layer, &tune_layer_codes, &set_schedule_shape, &evaluate, &keep_state, &revert_state};
  return &table;
}

}  // namespace qforge::host
