// The block-sequential quantization pipeline; see qforge_host/pipeline.hpp.
#include "qforge_host/pipeline.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qforge_host/checkpoint.hpp"
#include "qforge_host/errors.hpp"
#include "qforge_host/log.hpp"
#include "qforge_host/model.hpp"
#include "qforge_host/progress.hpp"
#include "qforge_host/safetensors.hpp"
#include "qforge_host/services.hpp"
#include "qforge_host/tokenizer.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace qforge::host {
namespace {

// True-sequential order inside a block: each stage's layers share one input.
const std::vector<std::vector<const char*>> kStages = {
    {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
    {"self_attn.o_proj"},
    {"mlp.gate_proj", "mlp.up_proj"},
    {"mlp.down_proj"}};

const char* kCheckpointDir = ".qforge-checkpoint";
const char* kResultsFile = "quant_results.safetensors";

Linear& linear_of(Block& b, const std::string& suffix) {
  for (Linear* l : b.linears())
    if (l->name.size() >= suffix.size() &&
        l->name.compare(l->name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return *l;
  throw std::logic_error("no linear " + suffix);
}

std::string block_prefix(size_t i) { return fmt::format("model.layers.{}.", i); }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Accumulates G = Σ xᵀx and, for QEP, Δ = Σ (x̃ − x)ᵀx one sequence at a
// time in a fixed order, so chunking the forward passes changes nothing.
struct GramAccumulator {
  at::Tensor gram, delta;
  int64_t rows = 0;
  void add(const at::Tensor& x, const at::Tensor& x_fp) {  // [S, T, in] float32
    for (int64_t s = 0; s < x.size(0); ++s) {
      at::Tensor xs = x[s].to(at::kFloat);
      if (!gram.defined()) gram = at::zeros({xs.size(1), xs.size(1)}, at::kFloat);
      gram.addmm_(xs.t(), xs);
      if (x_fp.defined()) {
        if (!delta.defined()) delta = at::zeros_like(gram);
        delta.addmm_((x_fp[s].to(at::kFloat) - xs).t(), xs);
      }
      rows += xs.size(0);
    }
  }
};

std::string options_fingerprint(const QuantizeOptions& o) {
  json overrides = json::array();
  for (const auto& ov : o.overrides) overrides.push_back({ov.pattern, ov.params});
  const auto& c = o.calibration;
  const auto& s = o.selection;
  return json{{"model", fs::weakly_canonical(o.model_dir).string()},
              {"method", o.method},
              {"params", o.params},
              {"overrides", overrides},
              {"selection", {s.target_types, s.include_names, s.include_keywords, s.exclude_names,
                             s.exclude_keywords, s.num_layers}},
              {"calibration", {c.file, c.format, c.text_field, c.nsamples, c.seqlen, c.seed, c.strategy}},
              {"qep", {o.qep, o.qep_percdamp, o.qep_perccorr}},
              {"act_dtype", std::string(at::toString(o.act_dtype))},
              {"save_format", save_format_name(o.save_format)}}
      .dump();
}

}  // namespace

std::map<std::string, double> error_metrics(const at::Tensor& w, const at::Tensor& w_hat,
                                            const at::Tensor& hessian, int64_t n) {
  // ||XΔWᵀ||² = tr(ΔW XᵀX ΔWᵀ) = n/2 · tr(ΔW H ΔWᵀ): float32 products (no
  // double copy of a possibly 8192² Hessian), double accumulation.
  at::Tensor W = w.to(at::kFloat), D = W - w_hat.to(at::kFloat), H = hessian.to(at::kFloat);
  double half_n = static_cast<double>(n) / 2.0;
  double out_se = half_n * (at::matmul(D, H) * D).sum(at::kDouble).item<double>();
  double out_ref = half_n * (at::matmul(W, H) * W).sum(at::kDouble).item<double>();
  double w_se = D.pow(2).sum(at::kDouble).item<double>();
  double w_ref = W.pow(2).sum(at::kDouble).item<double>();
  double rows = static_cast<double>(w.size(0)), numel = static_cast<double>(w.numel());
  return {{"output_squared_error", out_se},
          {"mean_output_squared_error", out_se / (static_cast<double>(n) * rows)},
          {"weight_squared_error", w_se},
          {"mean_weight_squared_error", w_se / numel},
          {"relative_output_error", out_ref > 0 ? out_se / out_ref : 0.0},
          {"relative_weight_error", w_ref > 0 ? w_se / w_ref : 0.0}};
}

at::Tensor qep_correct(const at::Tensor& w, const at::Tensor& gram, const at::Tensor& delta,
                       double percdamp, double perccorr) {
  at::Tensor G = gram.to(at::kDouble).clone();
  at::Tensor W = w.to(at::kDouble).clone();
  at::Tensor diag = G.diagonal();
  at::Tensor dead = diag == 0;
  double damp = percdamp * diag.mean().item<double>();
  diag.masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);
  diag.add_(damp);
  at::Tensor L = at::linalg_cholesky(G);
  // W Δ G⁻¹ = (G⁻¹ Δᵀ Wᵀ)ᵀ, G symmetric.
  at::Tensor rhs = at::matmul(delta.to(at::kDouble).t(), W.t());
  at::Tensor corr = at::cholesky_solve(rhs, L).t();
  return (W + perccorr * corr).to(w.scalar_type());
}

void save_results(const std::string& path, const std::string& method,
                  const std::vector<SavedLayer>& layers) {
  json report = {{"method", method}, {"layers", json::array()}};
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& l : layers) {
    json names = json::array();
    for (const auto& [name, t] : l.result.tensors) {
      tensors.emplace_back(l.report.name + "/" + name, t);
      names.push_back(name);
    }
    bool deq = l.result.dequantized.defined();
    if (deq) tensors.emplace_back(l.report.name + "/dequantized", l.result.dequantized);
    report["layers"].push_back({{"name", l.report.name},
                                {"format", l.report.format},
                                {"metadata", l.report.metadata},
                                {"metrics", l.report.metrics},
                                {"tensors", names},
                                {"dequantized", deq}});
  }
  save_safetensors(path, tensors, {{"qforge.results", report.dump()}});
}

std::vector<SavedLayer> load_results(const std::string& path) {
  SafetensorsFile file(path);
  auto it = file.metadata().find("qforge.results");
  if (it == file.metadata().end())
    throw UsageError(fmt::format("{}: not a qforge results file (no qforge.results metadata)", path));
  json report = json::parse(it->second, nullptr, false);
  if (report.is_discarded() || !report.is_object() || !report.contains("layers") ||
      !report["layers"].is_array())
    throw UsageError(fmt::format("{}: malformed qforge.results metadata", path));
  std::vector<SavedLayer> out;
  if (report["layers"].empty()) throw UsageError(fmt::format("{}: holds no layers", path));
  try {
    for (const auto& j : report["layers"]) {
      SavedLayer l;
      l.report.name = j.at("name").get<std::string>();
      l.report.format = j.at("format").get<std::string>();
      l.report.metadata = j.at("metadata").get<std::string>();
      l.report.metrics = j.at("metrics").get<std::map<std::string, double>>();
      l.result.format = l.report.format;
      l.result.metadata = l.report.metadata;
      for (const auto& name : j.at("tensors"))
        l.result.tensors[name.get<std::string>()] =
            file.load(l.report.name + "/" + name.get<std::string>(),
                      to_scalar_type(file.info(l.report.name + "/" + name.get<std::string>()).dtype));
      if (j.at("dequantized").get<bool>())
        l.result.dequantized = file.load(l.report.name + "/dequantized", at::kFloat);
      out.push_back(std::move(l));
    }
  } catch (const json::exception& e) {
    throw UsageError(fmt::format("{}: malformed qforge.results metadata: {}", path, e.what()));
  }
  return out;
}

QuantizeSummary quantize_model(const Registry& registry, const QuantizeOptions& o) {
  const Component* q = registry.find(o.method);
  if (q == nullptr || q->quantizer() == nullptr)
    throw UsageError(fmt::format("no quantizer with id '{}' (see `qforge plugins`)", o.method));
  if (o.out_dir.empty()) throw UsageError("--out DIR is required");
  if (o.chunk < 1) throw UsageError("--chunk must be at least 1");
  // Validate the parameters (and every override) before any work.
  ParamValues base(o.method, q->desc->params, q->desc->param_count, o.params);
  auto params_for = [&](const std::string& layer) {
    auto merged = o.params;
    for (const auto& [k, v] : overrides_for(layer, o.overrides)) merged[k] = v;
    return merged;
  };

  Model model = Model::open(o.model_dir, at::kFloat);
  const ModelConfig& cfg = model.config();
  const TensorStore& store = model.store();

  std::vector<std::pair<std::string, std::string>> candidates;
  for (int64_t i = 0; i < cfg.num_layers; ++i)
    for (const auto& stage : kStages)
      for (const char* s : stage) candidates.emplace_back(block_prefix(i) + s, "linear");
  candidates.emplace_back("lm_head", "linear");
  std::vector<std::string> selected = select_layers(candidates, o.selection);
  std::set<std::string> chosen(selected.begin(), selected.end());
  if (chosen.count("lm_head"))
    throw UsageError("quantizing lm_head is not supported by the pipeline yet; exclude it");
  for (const auto& name : selected) ParamValues check(o.method, q->desc->params,
                                                      q->desc->param_count, params_for(name));
  fs::path out(o.out_dir), ckpt = out / kCheckpointDir;
  CheckpointWriter writer(o.save_format, o.model_dir, out, store, cfg.num_layers);
  std::vector<std::string> formats;
  for (const char* const* f = q->quantizer()->output_formats; f != nullptr && *f != nullptr; ++f)
    formats.emplace_back(*f);
  writer.check_plan(formats, selected);

  std::string fingerprint = options_fingerprint(o);
  int64_t start_block = 0;
  QuantizeSummary summary;
  at::Tensor x, x_fp;  // the quantized and full-precision streams [n, T, hidden]
  if (o.resume && fs::exists(ckpt / "state.json")) {
    json state = json::parse(read_text(ckpt / "state.json"), nullptr, false);
    if (state.is_discarded() || state.value("fingerprint", "") != fingerprint)
      throw UsageError(fmt::format(
          "{}: the checkpoint was made with different options; rerun without --resume "
          "(or with the same options)", ckpt.string()));
    start_block = state["next_block"].get<int64_t>();
    summary.calibration = state["calibration"].get<std::string>();
    SafetensorsFile acts((ckpt / "activations.safetensors").string());
    x = acts.load("x", o.act_dtype);
    if (acts.contains("x_fp")) x_fp = acts.load("x_fp", o.act_dtype);
    summary.resumed_from_block = start_block;
    log(LogLevel::info, "resuming at block {}/{} from {}", start_block, cfg.num_layers, ckpt.string());
  } else {
    if (fs::exists(out / "model.safetensors.index.json") || fs::exists(ckpt))
      if (!o.resume)
        throw UsageError(fmt::format("{} already holds a model or a checkpoint; choose another "
                                     "--out, delete it, or pass --resume", out.string()));
    auto tok = load_tokenizer(o.model_dir);
    Calibration cal = load_calibration(*tok, o.calibration);
    summary.calibration = cal.description;
    log(LogLevel::info, "calibration: {}", cal.description);
    at::NoGradGuard no_grad;
    // Rows of the mapped embedding table: no float32 copy of the whole table.
    at::Tensor table = store.view("model.embed_tokens.weight");
    if (cal.ids.max().item<int64_t>() >= table.size(0))
      throw UsageError("calibration token ids exceed the model's vocabulary");
    x = at::embedding(table, cal.ids).to(o.act_dtype);
    if (o.qep) x_fp = x.clone();
    fs::create_directories(ckpt);  // only once the inputs are known to be good
  }

  const int64_t n = x.size(0);
  int64_t total_layers = static_cast<int64_t>(selected.size()), done_layers = 0;
  for (const auto& name : selected)
    if (name.rfind("model.layers.", 0) == 0 &&
        std::stoll(name.substr(13)) < start_block) ++done_layers;
  ProgressLine progress("quantize", "layers");
  auto forward_chunks = [&](size_t i, const at::Tensor& in, const LinearTap* tap,
                            const std::function<void(int64_t, const at::Tensor&)>& each) {
    for (int64_t s = 0; s < n; s += o.chunk) {
      int64_t m = std::min(o.chunk, n - s);
      at::Tensor y = model.block_forward(i, in.narrow(0, s, m).to(at::kFloat), 0, nullptr, tap);
      if (each) each(s, y);
    }
  };

  for (int64_t i = start_block; i < cfg.num_layers; ++i) {
    model.load_block(i);
    Block& b = model.blocks()[i];
    Block original = b;  // shares the original weights (never modified in place)
    std::vector<SavedLayer> block_results;
    for (const auto& stage : kStages) {
      std::vector<Linear*> todo;
      for (const char* s : stage)
        if (chosen.count(block_prefix(i) + s)) todo.push_back(&linear_of(b, s));
      if (todo.empty()) continue;
      // Inputs of this stage's first layer, from both streams, one chunk at a time.
      std::string probe = todo.front()->name;
      GramAccumulator acc;
      for (int64_t s = 0; s < n; s += o.chunk) {
        int64_t m = std::min(o.chunk, n - s);
        at::Tensor captured, captured_fp;
        // Stops the pass at the probe: the rest of the block is not needed.
        LinearTap tap = [&](const Linear& l, const at::Tensor& in) {
          if (l.name != probe) return true;
          captured = in;
          return false;
        };
        model.block_forward(i, x.narrow(0, s, m).to(at::kFloat), 0, nullptr, &tap);
        if (o.qep) {
          LinearTap tap_fp = [&](const Linear& l, const at::Tensor& in) {
            if (l.name != probe) return true;
            captured_fp = in;
            return false;
          };
          std::swap(model.blocks()[i], original);
          model.block_forward(i, x_fp.narrow(0, s, m).to(at::kFloat), 0, nullptr, &tap_fp);
          std::swap(model.blocks()[i], original);
        }
        acc.add(captured, captured_fp);
      }
      // H = 2/n XᵀX in place (one n×n copy); the QEP cross term is scaled
      // alike, which leaves W Δ (G + λI)⁻¹ unchanged.
      at::Tensor hessian = acc.gram.mul_(2.0 / static_cast<double>(acc.rows));
      if (acc.delta.defined()) acc.delta.mul_(2.0 / static_cast<double>(acc.rows));
      for (Linear* l : todo) {
        if (cancel_requested()) throw Cancelled("stopped by the user");
        auto t0 = std::chrono::steady_clock::now();
        at::Tensor w = l->weight;
        QuantizeRequest req;
        req.layer_name = l->name;
        req.weight = o.qep ? qep_correct(w, hessian, acc.delta, o.qep_percdamp, o.qep_perccorr) : w;
        req.bias = l->bias;
        req.hessian = hessian;
        req.nsamples = static_cast<uint64_t>(acc.rows);
        ParamValues pv(o.method, q->desc->params, q->desc->param_count, params_for(l->name));
        QuantResult r = quantize_layer(*q, req, pv);
        SavedLayer saved;
        saved.report.name = l->name;
        saved.report.format = r.format;
        saved.report.metadata = r.metadata;
        saved.report.metrics = error_metrics(w, r.dequantized, hessian, acc.rows);
        for (const auto& [k, v] : r.metrics) saved.report.metrics["plugin." + k] = v;
        saved.report.metrics["seconds"] =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        l->weight = r.dequantized.to(at::kFloat);
        saved.result = std::move(r);
        if (registry.find_inference_layer(saved.result.format) != nullptr)
          saved.result.dequantized = at::Tensor();
        log(LogLevel::debug, "{}: relative output error {:.3e}", l->name,
            saved.report.metrics["relative_output_error"]);
        block_results.push_back(std::move(saved));
        progress.update(++done_layers, total_layers);
      }
    }
    // The next block's inputs: the quantized block on the quantized stream,
    // the original block on the full-precision stream.
    at::Tensor next = at::empty_like(x), next_fp = o.qep ? at::empty_like(x_fp) : at::Tensor();
    forward_chunks(i, x, nullptr, [&](int64_t s, const at::Tensor& y) {
      next.narrow(0, s, y.size(0)).copy_(y);
    });
    if (o.qep) {
      std::swap(model.blocks()[i], original);
      forward_chunks(i, x_fp, nullptr, [&](int64_t s, const at::Tensor& y) {
        next_fp.narrow(0, s, y.size(0)).copy_(y);
      });
      std::swap(model.blocks()[i], original);
    }
    x = next;
    x_fp = next_fp;
    // Checkpoint: the block's weights, its results, the next inputs, then the
    // state that says all of that is complete (each written atomically).
    std::map<std::string, const QuantResult*> packed;
    for (const auto& r : block_results) packed[r.report.name] = &r.result;
    writer.write_block(i, b, packed);
    save_results((ckpt / fmt::format("results-block-{:05}.safetensors", i)).string(), o.method,
                 block_results);
    std::vector<std::pair<std::string, at::Tensor>> acts = {{"x", x}};
    if (x_fp.defined()) acts.emplace_back("x_fp", x_fp);
    save_safetensors((ckpt / "activations.safetensors").string(), acts);
    write_text_atomic(ckpt / "state.json", json{{"fingerprint", fingerprint},
                                                {"next_block", i + 1},
                                                {"calibration", summary.calibration}}
                                               .dump());
    model.release_block(i);
    log(LogLevel::info, "block {}/{} done", i + 1, cfg.num_layers);
  }

  // Gather the per-block results into one file, write the model's remaining
  // files, and remove the checkpoint.
  // Merged from mapped views of the per-block files: no copy of every
  // layer's packed tensors in memory at once.
  std::vector<std::unique_ptr<SafetensorsFile>> parts;
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  json merged = {{"method", o.method}, {"layers", json::array()}};
  for (int64_t i = 0; i < cfg.num_layers; ++i) {
    std::string path = (ckpt / fmt::format("results-block-{:05}.safetensors", i)).string();
    parts.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& [name, info] : parts.back()->tensors()) tensors.emplace_back(name, parts.back()->view(name));
    json part = json::parse(parts.back()->metadata().at("qforge.results"));
    for (const auto& l : part["layers"]) {
      LayerReport r;
      r.name = l["name"];
      r.format = l["format"];
      r.metadata = l["metadata"];
      r.metrics = l["metrics"].get<std::map<std::string, double>>();
      summary.layers.push_back(r);
      merged["layers"].push_back(l);
    }
  }
  summary.results_file = (out / kResultsFile).string();
  save_safetensors(summary.results_file, tensors, {{"qforge.results", merged.dump()}});
  tensors.clear();
  parts.clear();
  std::vector<std::pair<std::string, std::string>> layer_formats;
  for (const auto& l : summary.layers) layer_formats.emplace_back(l.format, l.metadata);
  writer.finish(layer_formats);
  fs::remove_all(ckpt);
  return summary;
}

void apply_results(const Registry& registry, const std::string& model_dir,
                   const std::string& results_file, const std::string& out_dir,
                   SaveFormat save_format) {
  fs::path out(out_dir);
  if (fs::exists(out / "model.safetensors.index.json"))
    throw UsageError(fmt::format("{} already holds a model", out_dir));
  std::map<std::string, at::Tensor> weights;
  const std::vector<SavedLayer> saved = load_results(results_file);
  std::map<std::string, const QuantResult*> packed;
  std::vector<std::string> names;
  std::set<std::string> formats;
  std::vector<std::pair<std::string, std::string>> layer_formats;
  for (const auto& l : saved) {
    packed[l.report.name] = &l.result;
    names.push_back(l.report.name);
    formats.insert(l.result.format);
    layer_formats.emplace_back(l.result.format, l.result.metadata);
  }
  for (const auto& l : saved) {
    if (l.result.dequantized.defined()) {
      weights[l.report.name] = l.result.dequantized;
      continue;
    }
    const Component* c = registry.find_inference_layer(l.result.format);
    if (c == nullptr)
      throw UsageError(fmt::format("{}: no loaded inference layer reads format {} (layer {})",
                                   results_file, l.result.format, l.report.name));
    weights[l.report.name] = PackedLayer(*c, l.result).dequantize();
  }
  Model model = Model::load(model_dir, at::kFloat, false);
  const TensorStore& store = model.store();
  CheckpointWriter writer(save_format, model_dir, out, store, model.config().num_layers);
  writer.check_plan(std::vector<std::string>(formats.begin(), formats.end()), names);
  if (save_format == SaveFormat::gptq && formats.size() != 1)
    throw UsageError(fmt::format("{}: --save-format gptq needs every layer in {}, the results "
                                 "hold {}", results_file, kGptqPackedFormat, fmt::join(formats, ", ")));
  // Check every layer against the model before writing anything.
  for (const auto& [name, w] : weights) {
    if (!store.contains(name + ".weight"))
      throw UsageError(fmt::format("{}: layer {} is not in {}", results_file, name, model_dir));
    if (store.info(name + ".weight").shape != w.sizes().vec())
      throw UsageError(fmt::format("{}: layer {} has the wrong shape for {}", results_file, name,
                                   model_dir));
  }
  fs::create_directories(out);
  for (int64_t i = 0; i < model.config().num_layers; ++i) {
    model.load_block(i);
    Block& b = model.blocks()[i];
    for (Linear* l : b.linears()) {
      auto it = weights.find(l->name);
      if (it != weights.end()) l->weight = it->second;
    }
    writer.write_block(i, b, packed);
    model.release_block(i);
  }
  writer.finish(layer_formats);
}

}  // namespace qforge::host
