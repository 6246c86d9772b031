// Optional header-only helper for pre-processes that rescale input channels
// (SmoothQuant, AWQ): the linears of a block grouped by the parameter their
// inputs come from (model services input_source, ABI 1.2), their input
// statistics, and the equivalent transformation Y = (X diag(s)⁻¹)(diag(s) W)
// folded into the model — the source (a norm's weight, or a linear's rows and
// bias) divided by s, the input columns of every linear of the group
// multiplied by s. Needs ATen (qforge/cpp/torch.hpp).
#ifndef QFORGE_CPP_CHANNEL_SCALING_HPP
#define QFORGE_CPP_CHANNEL_SCALING_HPP

#include <ATen/ATen.h>
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge/postprocess.h>

#include <map>
#include <string>
#include <vector>

namespace qforge::scaling {

// The linears of one block that read the same input, and where it comes from.
struct InputGroup {
  std::string source_weight;  // a norm's weight [in], or a linear's weight [in, k] (its rows)
  std::string source_bias;    // that linear's bias, or ""
  std::vector<uint32_t> layers;  // model services indices, in the model's order
  bool source_is_norm = true;
};

inline at::Tensor get_parameter(const Host& host, const qforge_model_services& m,
                                const std::string& name) {
  DLManagedTensor* t = nullptr;
  check(host.get(), m.get_parameter(&m, name.c_str(), &t));
  return adopt(t);
}

inline void set_parameter(const Host& host, const qforge_model_services& m,
                          const std::string& name, const at::Tensor& value) {
  const at::Tensor v = value.to(at::kFloat).contiguous();
  DLView view(v);
  check(host.get(), m.set_parameter(&m, name.c_str(), view.get()));
}

inline std::string weight_of(const qforge_model_services& m, uint32_t layer) {
  return std::string(m.layer_name(&m, layer)) + ".weight";
}

// The groups of the services' linears that have a source, in the model's
// order; linears fed by another linear (v_proj → o_proj, up_proj →
// down_proj) only when `linear_sources`.
inline std::vector<InputGroup> input_groups(const Host& host, const qforge_model_services& m,
                                            bool linear_sources) {
  std::map<std::string, InputGroup> by_source;
  std::vector<std::string> order;
  for (uint32_t i = 0, n = m.layer_count(&m); i < n; ++i) {
    const char *weight = nullptr, *bias = nullptr;
    check(host.get(), m.input_source(&m, i, &weight, &bias));
    if (weight == nullptr || *weight == '\0') continue;
    auto [it, fresh] = by_source.try_emplace(weight, InputGroup{weight, bias ? bias : "", {}});
    if (fresh) order.push_back(weight);
    it->second.layers.push_back(i);
  }
  std::vector<InputGroup> out;
  for (const auto& name : order) {
    InputGroup& g = by_source.at(name);
    g.source_is_norm = get_parameter(host, m, g.source_weight).dim() == 1;
    if (g.source_is_norm || linear_sources) out.push_back(std::move(g));
  }
  return out;
}

// The host's statistics of the group's input (model services input_stats):
// float32 [3, in], rows min x, max x, mean |x| over the calibration tokens.
inline at::Tensor input_stats(const Host& host, const qforge_model_services& m,
                              const InputGroup& g) {
  DLManagedTensor* t = nullptr;
  check(host.get(), m.input_stats(&m, g.layers.front(), &t));
  return adopt(t);
}

// (1/n) Σ x xᵀ of the group's input, float32 [in, in] (input_gram, ABI 1.3).
inline at::Tensor input_gram(const Host& host, const qforge_model_services& m,
                             const InputGroup& g) {
  DLManagedTensor* t = nullptr;
  check(host.get(), m.input_gram(&m, g.layers.front(), &t));
  return adopt(t);
}

// The weights of the group's linears, in the group's order.
inline std::vector<at::Tensor> weights_of(const Host& host, const qforge_model_services& m,
                                          const InputGroup& g) {
  std::vector<at::Tensor> w;
  for (uint32_t i : g.layers) w.push_back(get_parameter(host, m, weight_of(m, i)));
  return w;
}

// Y = (X diag(s)⁻¹)(diag(s) W): the source's channels over s, the group's
// input columns (`weights`, as read by weights_of) times s. In double, then
// stored as float32.
inline void fold(const Host& host, const qforge_model_services& m, const InputGroup& g,
                 const std::vector<at::Tensor>& weights, const at::Tensor& s_in) {
  const at::Tensor s = s_in.to(at::kDouble);
  const at::Tensor source = get_parameter(host, m, g.source_weight).to(at::kDouble);
  set_parameter(host, m, g.source_weight, source.dim() == 1 ? source / s : source / s.unsqueeze(1));
  if (!g.source_bias.empty())
    set_parameter(host, m, g.source_bias, get_parameter(host, m, g.source_bias).to(at::kDouble) / s);
  for (size_t k = 0; k < g.layers.size(); ++k)
    set_parameter(host, m, weight_of(m, g.layers[k]), weights[k].to(at::kDouble) * s.unsqueeze(0));
}

}  // namespace qforge::scaling

#endif  // QFORGE_CPP_CHANNEL_SCALING_HPP
