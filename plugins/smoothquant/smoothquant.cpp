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
#include <qforge/cpp/channel_scaling.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <ATen/ATen.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

namespace scaling = qforge::scaling;

// Eq. (4), with s = 1 where X_j or W_j is zero throughout, clamped ≥ 1e-5.
at::Tensor smoothing_scales(const at::Tensor& x_max, const at::Tensor& w_max, double alpha) {
  at::Tensor s = x_max.pow(alpha) / w_max.pow(1.0 - alpha);
  const at::Tensor dead = (x_max <= 0).logical_or(w_max <= 0);
  return at::where(dead, at::ones_like(s), s).clamp_min(1e-5);
}

void smooth(const qforge::Host& host, const qforge_model_services& m,
            const scaling::InputGroup& g, double alpha, uint32_t block) {
  // max|X_j| over the calibration tokens: the stats rows are min, max, mean |x|.
  const at::Tensor stats = scaling::input_stats(host, m, g).to(at::kDouble);
  const at::Tensor x_max = at::maximum(stats[0].neg(), stats[1]);
  const std::vector<at::Tensor> weights = scaling::weights_of(host, m, g);
  at::Tensor w_max;
  for (const at::Tensor& w : weights) {
    const at::Tensor col = std::get<0>(w.abs().max(0)).to(at::kDouble);
    w_max = w_max.defined() ? at::maximum(w_max, col) : col;
  }
  const at::Tensor s = smoothing_scales(x_max, w_max, alpha);
  scaling::fold(host, m, g, weights, s);
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
    for (const auto& g : scaling::input_groups(host, model, params.get_bool("linear_sources"))) {
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
