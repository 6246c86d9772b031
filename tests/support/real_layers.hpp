// Real layers for the quantizer tests: linears of stories260K with the
// Hessians 2/n XᵀX of their inputs on 16 windows of 128 calibration tokens.
#pragma once

#include <ATen/ATen.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "qforge_host/data/calibration.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"

namespace qforge::test {

struct RealLayer {
  std::string name;
  at::Tensor weight;   // [out, in] float32
  at::Tensor hessian;  // 2/n XᵀX of the layer's inputs, float32
};

// The linears `names` (suffixes, e.g. "self_attn.q_proj") of `blocks` of the
// stories260K in `shared`, in block order, on the calibration windows of `seed`.
inline std::vector<RealLayer> real_layers(const std::string& shared, uint64_t seed,
                                          const std::set<size_t>& blocks,
                                          const std::vector<std::string>& names) {
  const std::string model_dir = shared + "/models/stories260K";
  host::Model model = host::Model::load(model_dir, at::kFloat);
  auto tok = host::load_tokenizer(model_dir);
  host::CalibrationOptions opt;
  opt.file = shared + "/data/tinystories_v2_calib.txt";
  opt.nsamples = 16;
  opt.seqlen = 128;
  opt.seed = seed;
  const at::Tensor ids = host::load_calibration(*tok, opt).ids;
  std::map<std::string, at::Tensor> inputs;
  host::LinearTap tap = [&](const host::Linear& l, const at::Tensor& x) {
    inputs[l.name] = x.reshape({-1, x.size(-1)}).to(at::kDouble);
    return true;
  };
  std::vector<RealLayer> out;
  at::Tensor x = model.embed(ids);
  for (size_t b = 0; b < model.blocks().size(); ++b) {
    inputs.clear();
    x = model.block_forward(b, x, 0, nullptr, &tap);
    if (!blocks.count(b)) continue;
    for (const auto& name : names) {
      const host::Linear* l = model.blocks()[b].find(name);
      const at::Tensor& in = inputs.at(l->name);
      const at::Tensor h = (in.t().mm(in) * (2.0 / in.size(0))).to(at::kFloat).contiguous();
      out.push_back({l->name, l->weight.to(at::kFloat).contiguous(), h});
    }
  }
  return out;
}

}  // namespace qforge::test
