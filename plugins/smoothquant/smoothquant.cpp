// qforge-smoothquant: SmoothQuant (Xiao et al., ICML 2023, "SmoothQuant:
// Accurate and Efficient Post-Training Quantization for Large Language
// Models"), a pre-process. For every group of linears that read the same
// input X (q/k/v after input_layernorm, gate/up after
// post_attention_layernorm; optionally o after v_proj and down after
// up_proj), §4.2 eq. (4):
//
//     s_j = max|X_j|^α / max|W_j|^(1−α),
//
// X_j the j-th input channel over the calibration tokens, W_j the j-th input
// column of every linear of the group (max over all of them), and the
// equivalent transformation Y = (X diag(s)⁻¹)·(diag(s) W): the source of X
// (the norm's weight, or the rows of the linear before) is divided by s and
// the group's input columns are multiplied by it. The model computes the
// same function; the activations lose their outlier channels, which is what
// per-token int8 activations need.
//
// As llm-compressor's SmoothQuantModifier (research/llm-compressor.md §6.6):
// α default 0.5 (its W8A8 examples use 0.8), norms only by default, s
// clamped ≥ 1e-5. Unlike it, the statistic is max|X| as in the paper (it
// uses the range max − min), and a channel that is zero in every token or
// every weight keeps s = 1 rather than a scale that would blow up its
// source. Which parameter feeds which linears comes from the host's
// architecture table (model services input_source); the statistics from the
// host's calibration pass over the block (input_stats).
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <ATen/ATen.h>

#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace {

// The linears of one block that read the same input, and where it comes from.
struct Group {
  std::string source_weight, source_bias;  // a norm's weight, or a linear's rows (+ bias)
  std::vector<uint32_t> layers;
};

at::Tensor get(const qforge::Host& host, const qforge_model_services& m, const std::string& name) {
  DLManagedTensor* t = nullptr;
  qforge::check(host.get(), m.get_parameter(&m, name.c_str(), &t));
  return qforge::adopt(t);
}

void set(const qforge::Host& host, const qforge_model_services& m, const std::string& name,
         const at::Tensor& value) {
  const at::Tensor v = value.contiguous();
  qforge::DLView view(v);
  qforge::check(host.get(), m.set_parameter(&m, name.c_str(), view.get()));
}

std::vector<Group> groups_of(const qforge::Host& host, const qforge_model_services& m,
                             bool linear_sources) {
  std::map<std::string, Group> by_source;
  std::vector<std::string> order;
  for (uint32_t i = 0, n = m.layer_count(&m); i < n; ++i) {
    const char *weight = nullptr, *bias = nullptr;
    qforge::check(host.get(), m.input_source(&m, i, &weight, &bias));
    if (weight == nullptr || *weight == '\0') continue;
    auto [it, fresh] = by_source.try_emplace(weight, Group{weight, bias ? bias : "", {}});
    if (fresh) order.push_back(weight);
    it->second.layers.push_back(i);
  }
  std::vector<Group> out;
  for (const auto& name : order) {
    Group& g = by_source.at(name);
    const bool is_norm = get(host, m, g.source_weight).dim() == 1;
    if (is_norm || linear_sources) out.push_back(std::move(g));
  }
  return out;
}

// max|X_j| over the calibration tokens: the stats rows are min, max, mean |x|.
at::Tensor act_absmax(const qforge::Host& host, const qforge_model_services& m, uint32_t layer) {
  DLManagedTensor* t = nullptr;
  qforge::check(host.get(), m.input_stats(&m, layer, &t));
  const at::Tensor stats = qforge::adopt(t);
  return at::maximum(stats[0].neg(), stats[1]);
}

// Eq. (4), with s = 1 where X_j or W_j is zero throughout, clamped ≥ 1e-5.
at::Tensor smoothing_scales(const at::Tensor& x_max, const at::Tensor& w_max, double alpha) {
  at::Tensor s = x_max.pow(alpha) / w_max.pow(1.0 - alpha);
  const at::Tensor dead = (x_max <= 0).logical_or(w_max <= 0);
  return at::where(dead, at::ones_like(s), s).clamp_min(1e-5);
}

void smooth(const qforge::Host& host, const qforge_model_services& m, const Group& g,
            double alpha, uint32_t block) {
  const at::Tensor x_max = act_absmax(host, m, g.layers.front()).to(at::kDouble);
  std::vector<at::Tensor> weights;
  at::Tensor w_max;
  for (uint32_t i : g.layers) {
    weights.push_back(get(host, m, std::string(m.layer_name(&m, i)) + ".weight"));
    const at::Tensor col = std::get<0>(weights.back().abs().max(0)).to(at::kDouble);
    w_max = w_max.defined() ? at::maximum(w_max, col) : col;
  }
  const at::Tensor s = smoothing_scales(x_max, w_max, alpha);
  // Y = (X diag(s)⁻¹)(diag(s) W): the source's channels over s, the columns times s.
  const at::Tensor source = get(host, m, g.source_weight).to(at::kDouble);
  set(host, m, g.source_weight,
      (source.dim() == 1 ? source / s : source / s.unsqueeze(1)).to(at::kFloat));
  if (!g.source_bias.empty())
    set(host, m, g.source_bias, (get(host, m, g.source_bias).to(at::kDouble) / s).to(at::kFloat));
  for (size_t k = 0; k < g.layers.size(); ++k)
    set(host, m, std::string(m.layer_name(&m, g.layers[k])) + ".weight",
        (weights[k].to(at::kDouble) * s.unsqueeze(0)).to(at::kFloat));
  char line[256];
  std::snprintf(line, sizeof line,
                "smoothquant: block %u, %zu linear(s) after %s: max|X| %.3g -> %.3g, s in [%.3g, %.3g]",
                block, g.layers.size(), g.source_weight.c_str(), x_max.max().item<double>(),
                (x_max / s).max().item<double>(), s.min().item<double>(), s.max().item<double>());
  host.log(QFORGE_LOG_INFO, line);
}

struct SmoothQuant {
  static void run_block(const qforge::Host& host, const qforge_model_services& model,
                        uint32_t block, const qforge::Params& params) {
    const double alpha = params.get_float("alpha");
    for (const Group& g : groups_of(host, model, params.get_bool("linear_sources"))) {
      host.check_cancelled();
      smooth(host, model, g, alpha, block);
    }
  }
};

void describe(qforge::Plugin& plugin) {
  plugin
      .preprocess<SmoothQuant>(
          {"org.qforge.smoothquant", "SmoothQuant", "1.0.0", "qforge", "MIT",
           "SmoothQuant (Xiao et al., ICML 2023, eq. 4): per input channel s_j = "
           "max|X_j|^alpha / max|W_j|^(1-alpha) over the calibration tokens and the columns of "
           "the linears that share the input, folded into the norm before them (and with "
           "linear_sources into v_proj before o_proj and up_proj before down_proj): the model "
           "computes the same function with activation outliers moved into the weights, for "
           "int8 activations (qforge quantize --scheme W8A8 --preprocess org.qforge.smoothquant)."})
      .param_float("alpha", 0.5, 0.0, 1.0,
                   "migration strength: 0 leaves activations alone, 1 moves all of their range "
                   "into the weights (llm-compressor's default 0.5; its W8A8 examples use 0.8)")
      .param_bool("linear_sources", false,
                  "also smooth o_proj through v_proj's rows and down_proj through up_proj's "
                  "(where the architecture table allows: not under grouped-query attention)");
}

}  // namespace

QFORGE_PLUGIN("qforge-smoothquant", "1.0.0", describe)
