// The block loop; see qforge_host/pipeline/pipeline.hpp. Capture, QEP,
// metrics, resume and the results file are one file away each.
#include "qforge_host/pipeline/pipeline.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <malloc.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string_view>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/base/log.hpp"
#include "qforge_host/base/progress.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/pipeline/capture.hpp"
#include "qforge_host/pipeline/metrics.hpp"
#include "qforge_host/pipeline/qep.hpp"
#include "qforge_host/pipeline/resume.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/services.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace fs = std::filesystem;

namespace qforge::host {
namespace {

// Every block linear of the model (then lm_head), selected as the options say.
std::vector<std::string> select(const ModelConfig& cfg, const LayerSelection& selection) {
  std::vector<std::pair<std::string, std::string>> candidates;
  for (int64_t i = 0; i < cfg.num_layers; ++i)
    for (const auto& name : cfg.arch.layout->linear_names(i)) candidates.emplace_back(name, "linear");
  candidates.emplace_back("lm_head", "linear");
  std::vector<std::string> selected = select_layers(candidates, selection);
  for (const auto& name : selected)
    if (name == "lm_head")
      throw UsageError("quantizing lm_head is not supported by the pipeline yet; exclude it");
  return selected;
}

// What the quantizer asked the pipeline for (component.h, QFORGE_FEATURE_*)
// and what the run must therefore compute.
struct Needs {
  bool calibration = true;   // false: calibration-free and no --calib given
  bool fp_stream = false;    // the full-precision stream (QEP or needs-inputs-fp)
  CaptureWants capture;
};

Needs needs_of(const Component& q, const QuantizeOptions& o) {
  const bool free = q.has_feature(QFORGE_FEATURE_CALIBRATION_FREE);
  Needs n;
  n.calibration = !o.calibration.file.empty();
  if (!n.calibration && !o.block_postprocesses.empty())
    throw UsageError("a per-block post-process trains on the block's calibration inputs: "
                     "give --calib FILE");
  if (!n.calibration && !o.preprocesses.empty())
    throw UsageError("a pre-process works on the block's calibration inputs: give --calib FILE");
  if (!n.calibration && !free)
    throw UsageError(fmt::format("--calib FILE is required: {} is not calibration-free", o.method));
  if (!n.calibration && o.qep) throw UsageError("--qep needs calibration data (--calib FILE)");
  n.capture.delta = o.qep;
  n.capture.inputs_q = q.has_feature(QFORGE_FEATURE_NEEDS_INPUTS_Q);
  n.capture.inputs_fp = q.has_feature(QFORGE_FEATURE_NEEDS_INPUTS_FP);
  n.capture.act_stats = q.has_feature(QFORGE_FEATURE_NEEDS_ACT_STATS);
  n.capture.act_range = q.has_feature(QFORGE_FEATURE_NEEDS_ACT_ABSMAX);
  n.fp_stream = n.calibration && (o.qep || n.capture.inputs_fp);
  return n;
}

// Sizes the machine cannot hold are refused before any work: windows beyond
// the model's positions, and calibration activations (both streams, plus the
// next block's inputs) or one sequence's attention scores larger than memory.
void check_limits(const QuantizeOptions& o, const Needs& needs, const ModelConfig& cfg) {
  if (!needs.calibration) return;
  const int64_t n = o.calibration.nsamples, L = o.calibration.seqlen;
  if (cfg.max_position_embeddings > 0 && L > cfg.max_position_embeddings)
    throw UsageError(fmt::format("--seqlen {} is beyond the model's max_position_embeddings ({})",
                                 L, cfg.max_position_embeddings));
  if (n < 1 || L < 1) return;  // the calibration loader says what is wrong
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                        static_cast<double>(sysconf(_SC_PAGESIZE));
  // Both streams' activations and next inputs, plus the layer inputs a
  // quantizer asked for (float32, the widest layer input).
  const double width = static_cast<double>(std::max(cfg.hidden_size, cfg.intermediate_size));
  const double act = static_cast<double>(n) * L *
                     (cfg.hidden_size * static_cast<double>(c10::elementSize(o.act_dtype)) *
                          (needs.fp_stream ? 4 : 2) +
                      width * 4.0 * (needs.capture.inputs_q + needs.capture.inputs_fp));
  // Attention runs one sequence at a time (model.cpp): its scores and probabilities.
  const double scores = static_cast<double>(cfg.num_heads) * L * L * 4.0 * 2;
  if (memory > 0 && (act > memory || scores > memory))
    throw UsageError(fmt::format(
        "--nsamples {} --seqlen {}: the calibration needs about {:.1f} GiB (activations {:.1f} "
        "GiB, attention scores {:.1f} GiB), more than this machine's {:.1f} GiB",
        n, L, std::max(act, scores) / (1 << 30), act / (1 << 30), scores / (1 << 30),
        memory / (1 << 30)));
}

// The calibration sequences' embeddings, streamed from the mapped table.
ResumeState start_fresh(const QuantizeOptions& o, const Needs& needs, const TensorStore& store) {
  ResumeState s;
  if (!needs.calibration) {
    s.calibration = "none (the method is calibration-free)";
    return s;
  }
  auto tok = load_tokenizer(o.model_dir);
  Calibration cal = load_calibration(*tok, o.calibration);
  log(LogLevel::info, "calibration: {}", cal.description);
  at::Tensor table = store.view("model.embed_tokens.weight");  // no float32 copy of the table
  if (cal.ids.max().item<int64_t>() >= table.size(0))
    throw UsageError("calibration token ids exceed the model's vocabulary");
  s.calibration = cal.description;
  s.x = at::embedding(table, cal.ids).to(o.act_dtype);
  if (needs.fp_stream) s.x_fp = s.x.clone();
  return s;
}

// One layer through the quantizer: W (QEP-corrected when asked), its
// Hessian, its parameters; the result with the standard error figures. The
// layer's weight becomes the dequantized one.
SavedLayer quantize_one(const Registry& registry, const Component& q, const QuantizeOptions& o,
                        const ParamValues& params, Linear& l, const GramAccumulator& acc,
                        const at::Tensor& hessian) {
  if (cancel_requested()) throw Cancelled("stopped by the user");
  auto t0 = std::chrono::steady_clock::now();
  QuantizeRequest req;
  req.layer_name = l.name;
  req.weight = o.qep ? qep_correct(l.weight, hessian, acc.delta, o.qep_percdamp, o.qep_perccorr)
                     : l.weight;
  req.bias = l.bias;
  req.hessian = hessian;
  req.nsamples = static_cast<uint64_t>(acc.rows);
  req.inputs_q = acc.inputs_q;
  req.inputs_fp = acc.inputs_fp;
  req.act_stats = acc.act_stats;
  if (acc.act_min.defined()) req.act_absmax = at::maximum(acc.act_min.neg(), acc.act_max);
  SavedLayer saved;
  saved.result = quantize_layer(q, req, params);
  saved.report = {l.name, saved.result.format, saved.result.metadata,
                  error_metrics(l.weight, saved.result.dequantized, hessian, acc.rows)};
  for (const auto& [k, v] : saved.result.metrics) saved.report.metrics["plugin." + k] = v;
  saved.report.metrics["seconds"] =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  l.weight = saved.result.dequantized.to(at::kFloat);
  if (registry.find_inference_layer(saved.result.format) != nullptr)
    saved.result.dequantized = at::Tensor();  // rebuilt from the packed tensors
  log(LogLevel::debug, "{}: relative weight error {:.3e}", l.name,
      saved.report.metrics["relative_weight_error"]);
  return saved;
}

// A pre-process's parameters: those given, and for the others that the
// quantizer also has (same name and type, e.g. AWQ's bits, group_size and
// sym), the quantizer's value (--set, else its default), so that a search
// made for a grid is made for the grid the quantizer uses.
std::map<std::string, std::string> inherited_params(const Component& pre,
                                                    std::map<std::string, std::string> given,
                                                    const Component& quantizer,
                                                    const std::map<std::string, std::string>& set) {
  for (uint32_t i = 0; i < pre.desc->param_count; ++i) {
    const qforge_param_desc& p = *pre.desc->params[i];
    if (given.count(p.name)) continue;
    for (uint32_t k = 0; k < quantizer.desc->param_count; ++k) {
      const qforge_param_desc& qp = *quantizer.desc->params[k];
      if (std::string_view(qp.name) != p.name || qp.type != p.type) continue;
      if (auto it = set.find(p.name); it != set.end())
        given[p.name] = it->second;
      else if (qp.default_value != nullptr)
        given[p.name] = qp.default_value;
    }
  }
  return given;
}

// The pre-processes on block `i` (before anything of it is quantized): they
// see its linears and norms through model services, and the statistics of
// its linears' inputs on the calibration inputs `x`, computed on demand.
// Returns the parameters they replaced (for the results file).
ParamList preprocess_block(Model& model, int64_t i,
                           const std::vector<std::pair<const Component*, std::unique_ptr<ParamValues>>>& pres,
                           const at::Tensor& x, int64_t chunk) {
  const BlockScope scope = preprocess_scope(model, static_cast<size_t>(i), x, chunk);
  ModelServices services(model, PostprocessContext{}, &scope);
  for (const auto& [component, params] : pres) {
    if (cancel_requested()) throw Cancelled("stopped by the user");
    run_preprocess_block(*component, *params, services);
  }
  return services.written_parameters();
}

// The state to start from: the checkpoint's with --resume, else the
// calibration data's embeddings (refusing an --out that already holds a run).
ResumeState start(const QuantizeOptions& o, const Needs& needs, const RunCheckpoint& ckpt,
                  const Model& model, const std::string& fingerprint) {
  if (fs::is_symlink(ckpt.dir()))  // planted: writing through it would leave --out
    throw UsageError(fmt::format("{} is a symbolic link; qforge keeps its checkpoint only inside "
                                 "--out", ckpt.dir().string()));
  // What the previous run into --out was running when it died: said once,
  // in the refusal when there is one, else as a warning.
  const std::string died_in = ckpt.last_activity();
  const std::string previous =
      died_in.empty() ? "" : fmt::format("the previous run into {} died while running {}",
                                         o.out_dir, died_in);
  auto refuse = [&](const std::string& why) {
    throw UsageError(previous.empty() ? why : why + "; " + previous);
  };
  auto carry_on = [&] {
    if (!previous.empty()) log(LogLevel::warn, "{}", previous);
  };
  if (o.resume && ckpt.exists()) {
    ResumeState state;
    try {
      state = ckpt.load(fingerprint, o.act_dtype);
    } catch (const UsageError& e) {
      refuse(e.what());
    }
    carry_on();
    log(LogLevel::info, "resuming at block {}/{} from {}", state.next_block,
        model.config().num_layers, ckpt.dir().string());
    return state;
  }
  const fs::path out(o.out_dir);
  if (fs::exists(out / "model.safetensors.index.json"))
    refuse(fmt::format("{} already holds a model; choose another --out or delete it",
                       out.string()));
  if (ckpt.exists())  // (with --resume it was loaded above)
    refuse(fmt::format("{} holds the checkpoint of an unfinished run; continue it with --resume, "
                       "or choose another --out or delete it", out.string()));
  carry_on();
  // A run that stopped before finishing its first block left no state: nothing to keep.
  if (fs::exists(ckpt.dir()))
    log(LogLevel::info, "the checkpoint in {} has no finished block; starting at block 0",
        ckpt.dir().string());
  ResumeState state = start_fresh(o, needs, model.store());
  fs::create_directories(ckpt.dir());  // only once the inputs are known to be good
  return state;
}

}  // namespace

QuantizeSummary quantize_model(const Registry& registry, const QuantizeOptions& o,
                               BlockSink& sink) {
  at::NoGradGuard no_grad;
  const Component* q = registry.find(o.method);
  if (q == nullptr || q->quantizer() == nullptr)
    throw UsageError(fmt::format("no quantizer with id '{}' (see `qforge plugins`)", o.method));
  if (o.out_dir.empty()) throw UsageError("--out DIR is required");
  if (o.chunk < 1) throw UsageError("--chunk must be at least 1");
  auto params_for = [&](const std::string& layer) {
    auto merged = o.params;
    for (const auto& [k, v] : overrides_for(layer, o.overrides)) merged[k] = v;
    return ParamValues(o.method, q->desc->params, q->desc->param_count, merged);
  };
  ParamValues(o.method, q->desc->params, q->desc->param_count, o.params);  // before any work

  Model model = Model::open(o.model_dir, at::kFloat);
  const ModelConfig& cfg = model.config();
  const BlockLayout& layout = *cfg.arch.layout;
  const Needs needs = needs_of(*q, o);
  check_limits(o, needs, cfg);
  model.check_blocks();  // a tensor missing in block k is found now, not after k blocks
  std::vector<std::string> selected = select(cfg, o.selection);
  std::set<std::string> chosen(selected.begin(), selected.end());
  for (const auto& name : selected) params_for(name);  // every override is valid
  for (const auto& ov : o.overrides) {
    bool used = false;
    for (const auto& name : selected) used = used || !overrides_for(name, {ov}).empty();
    if (!used)
      throw UsageError(fmt::format("--override '{}' matches no selected layer (names look like "
                                   "{}self_attn.q_proj)", ov.pattern, layout.prefix(0)));
  }
  // The per-block post-processes, checked before any work.
  std::vector<std::pair<const Component*, std::unique_ptr<ParamValues>>> block_pps;
  for (const auto& pp : o.block_postprocesses) {
    const Component* c = registry.find(pp.id);
    if (c == nullptr || !has_run_block(*c))
      throw UsageError(fmt::format("'{}' is not a post-process with a per-block hook", pp.id));
    block_pps.emplace_back(c, std::make_unique<ParamValues>(pp.id, c->desc->params,
                                                            c->desc->param_count, pp.params));
  }
  std::vector<std::pair<const Component*, std::unique_ptr<ParamValues>>> pres;
  for (const auto& pre : o.preprocesses) {
    const Component* c = registry.find(pre.id);
    if (c == nullptr || c->preprocess() == nullptr)
      throw UsageError(fmt::format("'{}' is not a pre-process (see `qforge plugins`)", pre.id));
    pres.emplace_back(c, std::make_unique<ParamValues>(pre.id, c->desc->params,
                                                       c->desc->param_count,
                                                       inherited_params(*c, pre.params, *q, o.params)));
  }
  std::vector<std::string> formats;
  for (const char* const* f = q->quantizer()->output_formats; f != nullptr && *f != nullptr; ++f)
    formats.emplace_back(*f);
  sink.check_plan(formats, selected);

  RunCheckpoint ckpt(o.out_dir);
  const std::string fingerprint = options_fingerprint(o, sink.name(), q->library);
  ResumeState state = start(o, needs, ckpt, model, fingerprint);
  QuantizeSummary summary;
  for (int64_t i = 0; i < state.next_block; ++i) {  // what earlier runs wrote
    if (!o.block_postprocesses.empty()) {
      auto adapters = load_adapter_exports(ckpt.adapters_path(i));
      summary.adapters.insert(summary.adapters.end(), adapters.begin(), adapters.end());
    }
    const std::vector<SavedLayer> earlier = load_results(ckpt.results_path(i));
    std::map<std::string, const QuantResult*> packed;
    for (const auto& r : earlier) packed[r.report.name] = &r.result;
    sink.restore_block(static_cast<size_t>(i), packed);
  }
  auto record = std::make_unique<ActivityRecord>(ckpt.activity_path());
  summary.calibration = state.calibration;
  summary.resumed_from_block = state.next_block;

  int64_t done_layers = 0;
  for (const auto& name : selected)
    if (layout.block_of(name).value_or(0) < state.next_block) ++done_layers;
  ProgressLine progress("quantize", "layers");
  for (int64_t i = state.next_block; i < cfg.num_layers; ++i) {
    model.load_block(i);
    Block& b = model.blocks()[i];
    // What the pre-processes changed, but the weights the quantizer replaces.
    ParamList preprocessed;
    if (!pres.empty())
      for (auto& [name, t] : preprocess_block(model, i, pres, state.x, o.chunk))
        if (!(name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 &&
              chosen.count(name.substr(0, name.size() - 7))))
          preprocessed.emplace_back(name, t);
    Block original = b;  // shares the original weights (never modified in place)
    std::vector<SavedLayer> block_results;
    for (const auto& stage : layout.stages) {
      std::vector<Linear*> todo;
      for (const auto& s : stage)
        if (chosen.count(layout.prefix(i) + s)) todo.push_back(b.find(s));
      if (todo.empty()) continue;
      GramAccumulator acc;
      at::Tensor hessian;  // none without calibration
      if (needs.calibration) {
        acc = capture_inputs(model, i, original, todo.front()->name, state.x, state.x_fp, o.chunk,
                             needs.capture);
        // H = 2/n XᵀX in place (one n×n copy); the QEP cross term is scaled
        // alike, which leaves W Δ (G + λI)⁻¹ unchanged.
        hessian = acc.gram.mul_(2.0 / static_cast<double>(acc.rows));
        if (acc.delta.defined()) acc.delta.mul_(2.0 / static_cast<double>(acc.rows));
      }
      for (Linear* l : todo) {
        block_results.push_back(
            quantize_one(registry, *q, o, params_for(l->name), *l, acc, hessian));
        progress.update(++done_layers, static_cast<int64_t>(selected.size()));
      }
    }
    // Per-block post-processes reconstruct the block (against the original
    // block's outputs on the same inputs) before its output is propagated.
    std::vector<AdapterExport> adapters;
    if (!block_pps.empty()) {
      std::swap(model.blocks()[i], original);
      BlockScope scope{static_cast<size_t>(i), state.x, forward_block(model, i, state.x, o.chunk), {}, {}};
      std::swap(model.blocks()[i], original);
      // The quantized linears run packed during the hooks, so that their
      // format's parameters can be tuned (qforge.layer.tunable).
      std::map<std::string, SavedLayer*> results;
      for (auto& r : block_results) results[r.report.name] = &r;
      std::map<std::string, std::shared_ptr<PackedLayer>> attached;
      for (Linear* l : b.linears())
        if (auto it = results.find(l->name); it != results.end())
          if (const Component* c = registry.find_inference_layer(it->second->result.format)) {
            attached[l->name] = std::make_shared<PackedLayer>(*c, it->second->result);
            l->packed = attached[l->name];
          }
      // The block's error against its target: tuning that does not lower it
      // is rolled back (the results stay the quantizer's).
      auto block_error = [&] {
        const at::NoGradGuard no_grad;
        return (forward_block(model, i, state.x, o.chunk) - scope.targets).pow(2).mean().item<double>();
      };
      const double error_before = attached.empty() ? 0.0 : block_error();
      {
        ModelServices services(model, PostprocessContext{}, &scope);
        for (const auto& [component, params] : block_pps) run_postprocess_block(*component, *params, services);
        adapters = services.export_adapters();
        std::vector<std::string> tuned = services.tuned_layers();
        if (!tuned.empty() && adapters.empty()) {
          const double error_after = block_error();
          if (!(error_after < error_before)) {
            log(LogLevel::info, "block {}: tuning did not lower the block's error ({:.6g} -> "
                                "{:.6g}): rolled back", i, error_before, error_after);
            tuned.clear();
          }
        }
        // Tuned parameters go back into the results, in their own formats.
        for (const auto& name : tuned) {
          SavedLayer& saved = *results.at(name);
          saved.result = attached.at(name)->store();
          Linear* l = b.find(name.substr(layout.prefix(i).size()));
          l->weight = saved.result.dequantized.to(l->weight.scalar_type());
          log(LogLevel::info, "{}: tuned parameters stored in {}", name, saved.result.format);
        }
      }
      for (Linear* l : b.linears()) l->packed.reset();
      state.x = forward_block(model, i, state.x, o.chunk);  // through the adapters
    } else if (needs.calibration) {
      // The next block's inputs: the quantized block on the quantized stream,
      // the original block on the full-precision stream.
      state.x = forward_block(model, i, state.x, o.chunk);
    }
    if (needs.fp_stream) {
      std::swap(model.blocks()[i], original);
      state.x_fp = forward_block(model, i, state.x_fp, o.chunk);
      std::swap(model.blocks()[i], original);
    }
    state.next_block = i + 1;
    // The block's weights, its results, then the state that says all of that
    // is complete (each written atomically).
    std::map<std::string, const QuantResult*> packed;
    for (const auto& r : block_results) packed[r.report.name] = &r.result;
    std::vector<std::string> written = sink.write_block(i, b, packed);
    save_results(ckpt.results_path(i), o.method, block_results, preprocessed);
    written.push_back(ckpt.results_path(i));
    if (!block_pps.empty()) {
      save_adapter_exports(ckpt.adapters_path(i), adapters);
      written.push_back(ckpt.adapters_path(i));
      summary.adapters.insert(summary.adapters.end(), adapters.begin(), adapters.end());
    }
    ckpt.save(state, fingerprint, written);
    model.release_block(i);
    block_results.clear();
    // glibc keeps freed weight-sized blocks in its heaps (its mmap threshold
    // grows to each large block freed, up to 32 MiB) and would carry them
    // from block to block: hand them back to the system.
    malloc_trim(0);
    log(LogLevel::info, "block {}/{} done", i + 1, cfg.num_layers);
  }

  std::vector<std::string> parts;
  for (int64_t i = 0; i < cfg.num_layers; ++i) parts.push_back(ckpt.results_path(i));
  summary.results_file = (fs::path(o.out_dir) / "quant_results.safetensors").string();
  summary.layers = merge_results(parts, o.method, summary.results_file);
  sink.finish(summary.layers);
  record.reset();
  ckpt.remove();
  return summary;
}

}  // namespace qforge::host
