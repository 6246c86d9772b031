// qforge-awq: AWQ (Lin et al., MLSys 2024, "AWQ: Activation-aware Weight
// Quantization for On-Device LLM Compression and Acceleration"), a
// pre-process. For every group of linears that read the same input X (q/k/v
// after input_layernorm, gate/up after post_attention_layernorm, o after
// v_proj and down after up_proj where the architecture table allows), §3.2
// protects the salient input channels by scaling them before quantization:
//
//   eq. (4)  s* = argmin_s L(s),  L(s) = ‖Q(W·diag(s)) (diag(s)⁻¹·X) − W X‖
//   eq. (5)  s = s_X^α,  α* = argmin_α L(s_X^α),  α on a grid in [0, 1]
//
// s_X the mean |x| of each input channel over the calibration tokens. As
// llm-compressor's AWQModifier (research/llm-compressor.md §6.7), the "duo"
// variant is searched: s = s_X^α / (s_W^(1−α) + 1e-4), s_W the mean over
// the group's rows of |W| normalised by its quantization group's max; the
// grid is the identity (s = 1: plain round-to-nearest) and 19 ratios
// α = k/18; s is clamped ≥ 1e-4 and divided by sqrt(max s · min s). The
// best s is folded like SmoothQuant: the source of X divided by s, the
// group's input columns multiplied by it (the model's function is kept);
// the quantizer that follows (RTN, GPTQ) then quantizes W·diag(s).
//
// L is measured on the linears' outputs, exactly: with G = (1/n) Σ x xᵀ
// over the calibration tokens (model services input_gram),
// mean_t ‖ΔW x_t‖² = tr(ΔW G ΔWᵀ), ΔW = Q(W·diag(s))·diag(s)⁻¹ − W, summed
// over the group's linears. (llm-compressor re-runs the parent module on
// the cached inputs instead; its loss also sees what follows the linears.)
// Q is round-to-nearest on the grid given by bits / group_size / sym, which
// qforge quantize takes from the quantizer's --set values unless --pre-set.
// No weight-clipping search (AutoAWQ's auto_clip), as in llm-compressor.
#include <qforge/cpp/channel_scaling.hpp>
#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace grid = qforge::grid;
namespace scaling = qforge::scaling;

struct Settings {
  grid::Spec spec;
  int64_t group_size = 128;  // -1: one group per row
  int64_t n_grid = 20;
  bool duo = true;
};

// Q(W): round to nearest on the grid of every group of every row.
at::Tensor quantize(const at::Tensor& w, const Settings& s) {
  const at::Tensor x = w.to(at::kFloat).contiguous();
  const int64_t rows = x.size(0), in = x.size(1);
  const int64_t group = s.group_size > 0 ? s.group_size : in;
  at::Tensor q = at::empty_like(x);
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / in), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      grid::round_row(x.data_ptr<float>() + r * in, in, group, s.spec, q.data_ptr<float>() + r * in);
  });
  return q;
}

// s_W: |W| over its quantization group's max, averaged over the rows of all
// of the group's linears.
at::Tensor weight_mean(const std::vector<at::Tensor>& weights, int64_t group_size) {
  const at::Tensor w = at::cat(weights).abs().to(at::kDouble);
  const int64_t in = w.size(1), group = group_size > 0 ? group_size : in;
  std::vector<at::Tensor> parts;
  for (int64_t j0 = 0; j0 < in; j0 += group) {
    const at::Tensor g = w.narrow(1, j0, std::min(group, in - j0));
    parts.push_back(g / std::get<0>(g.max(1, true)).clamp_min(1e-30));
  }
  return at::cat(parts, 1).mean(0);
}

// Eq. (5)'s candidates: the identity, then s_X^α / (s_W^(1−α) + 1e-4) for
// α = k/(n−2), k = 0..n−2 (duo), or s_X^α for α = k/(n−1), k = 1..n−1.
std::vector<at::Tensor> candidates(const at::Tensor& x_mean, const at::Tensor& w_mean,
                                   const Settings& s) {
  std::vector<at::Tensor> out = {at::ones_like(x_mean)};
  const int64_t steps = s.duo ? s.n_grid - 2 : s.n_grid - 1;
  for (int64_t k = s.duo ? 0 : 1; k <= steps; ++k) {
    const double a = static_cast<double>(k) / static_cast<double>(steps);
    at::Tensor c = s.duo ? x_mean.pow(a) / (w_mean.pow(1.0 - a) + 1e-4) : x_mean.pow(a);
    c = c.clamp_min(1e-4);
    c = c / (c.max() * c.min()).sqrt();
    out.push_back(at::where(at::isfinite(c), c, at::ones_like(c)));
  }
  return out;
}

// Eq. (4): Σ over the group's linears of tr(ΔW G ΔWᵀ), ΔW = Q(W·s)/s − W,
// per output (mean over the rows).
double loss(const std::vector<at::Tensor>& weights, const at::Tensor& s, const at::Tensor& gram,
            const Settings& settings) {
  const at::Tensor sf = s.to(at::kFloat).unsqueeze(0);
  double total = 0;
  int64_t rows = 0;
  for (const at::Tensor& w : weights) {
    const at::Tensor dw = quantize(w * sf, settings) / sf - w;
    total += at::sum(dw.matmul(gram) * dw, at::kDouble).item<double>();
    rows += w.size(0);
  }
  return total / static_cast<double>(rows);
}

struct Search {
  at::Tensor s;
  double loss, identity_loss;
  int64_t index;
};

Search search(const std::vector<at::Tensor>& weights, const at::Tensor& x_mean,
              const at::Tensor& gram, const Settings& settings) {
  const std::vector<at::Tensor> cands =
      candidates(x_mean, weight_mean(weights, settings.group_size), settings);
  Search best{cands[0], std::numeric_limits<double>::infinity(), 0, 0};
  for (size_t k = 0; k < cands.size(); ++k) {
    const double l = loss(weights, cands[k], gram, settings);
    if (k == 0) best.identity_loss = l;
    if (l < best.loss) best = {cands[k], l, best.identity_loss, static_cast<int64_t>(k)};
  }
  return best;
}

Settings settings_of(const qforge::Params& p) {
  Settings s;
  s.spec.bits = grid::bits(p);
  s.spec.sym = p.get_bool("sym");
  s.group_size = p.get_int("group_size");
  if (s.group_size == 0 || s.group_size < -1)
    qforge::invalid_argument("group_size must be -1 or a positive number of inputs");
  s.n_grid = p.get_int("n_grid");
  s.duo = p.get_bool("duo_scaling");
  return s;
}

struct Awq {
  static void run_block(const qforge::Host& host, const qforge_model_services& model,
                        uint32_t block, const qforge::Params& params) {
    const Settings settings = settings_of(params);
    for (const auto& g : scaling::input_groups(host, model, params.get_bool("linear_sources"))) {
      host.check_cancelled();
      const at::Tensor x_mean = scaling::input_stats(host, model, g)[2].to(at::kDouble);
      const at::Tensor gram = scaling::input_gram(host, model, g);
      const std::vector<at::Tensor> weights = scaling::weights_of(host, model, g);
      const Search best = search(weights, x_mean, gram, settings);
      if (best.index != 0) scaling::fold(host, model, g, weights, best.s);
      char line[320];
      std::snprintf(line, sizeof line,
                    "awq: block %u, %zu linear(s) after %s: output error %.4g -> %.4g (%s), "
                    "s in [%.3g, %.3g]",
                    block, g.layers.size(), g.source_weight.c_str(), best.identity_loss, best.loss,
                    best.index == 0 ? "identity kept" : "scaled", best.s.min().item<double>(),
                    best.s.max().item<double>());
      host.log(QFORGE_LOG_INFO, line);
    }
  }
};

void describe(qforge::Plugin& plugin) {
  static const qforge_param_desc bits = grid::bits_param(
      "bits of the grid the scales are searched for (the quantizer's, unless --pre-set)");
  static const qforge_param_desc group_size = grid::group_size_param();
  static const qforge_param_desc sym = grid::sym_param();
  plugin
      .preprocess<Awq>(
          {"org.qforge.awq", "AWQ", "1.0.0", "qforge", "MIT",
           "AWQ (Lin et al., MLSys 2024, eq. 4-5): per input channel scales s = "
           "s_X^a / s_W^(1-a) (llm-compressor's duo scaling; the identity and 19 ratios a) "
           "chosen to minimise the round-to-nearest output error of the linears that share "
           "the input, tr(dW G dW^T) with G their calibration inputs' second moment, folded "
           "into the norm or linear before them (v_proj -> o_proj skipped under grouped-query "
           "attention). Then quantize with RTN or GPTQ on the same grid: qforge quantize "
           "--preprocess org.qforge.awq --method org.qforge.rtn --set bits=4 ... "
           "(bits, group_size and sym default to the quantizer's). No clipping search."})
      .min_host_minor(3)  // model services input_gram
      .param_int("bits", 4, 2, 8, bits.help)
      .param_int("group_size", 128, -1, 1048576, group_size.help)
      .param_bool("sym", true, sym.help)
      .param_int("n_grid", 20, 3, 1000,
                 "candidate scales searched per group of linears (with duo_scaling: the identity "
                 "and n_grid - 1 ratios)")
      .param_bool("duo_scaling", true,
                  "s = s_X^a / s_W^(1-a) (llm-compressor's default) rather than the paper's s_X^a")
      .param_bool("linear_sources", true,
                  "also scale o_proj through v_proj's rows and down_proj through up_proj's "
                  "(llm-compressor's default mappings; v_proj -> o_proj is skipped under "
                  "grouped-query attention)");
}

}  // namespace

QFORGE_PLUGIN("qforge-awq", "1.0.0", describe)
