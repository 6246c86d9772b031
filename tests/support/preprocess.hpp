// What the pre-process tests share (SmoothQuant, AWQ): stories260K with the
// embeddings of a few calibration windows as block 0's inputs, the inputs of
// one of block 0's linears as the pipeline captures them, and a pre-process
// run on block 0 as the pipeline runs it.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "qforge_host/data/calibration.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/capture.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/tokenizer/tokenizer.hpp"
#include "qforge_host/train/postprocess.hpp"
#include "support/plugins.hpp"

namespace qforge::test {

struct Block0 {
  host::Model model;
  at::Tensor x;  // block 0's calibration inputs [n, T, hidden]
};

// The model in `dir` and 8 windows of 128 tokens of `calib` embedded.
inline Block0 load_block0(const std::string& dir, const std::string& calib) {
  Block0 f{host::Model::load(dir, at::kFloat), {}};
  auto tok = host::load_tokenizer(dir);
  host::CalibrationOptions o;
  o.file = calib;
  o.nsamples = 8;
  o.seqlen = 128;
  const host::Calibration c = host::load_calibration(*tok, o);
  f.x = at::embedding(f.model.store().view("model.embed_tokens.weight"), c.ids).to(at::kFloat);
  return f;
}

// The inputs of `probe` in block 0 on x, [tokens, in], as the pipeline captures them.
inline at::Tensor inputs_of(host::Model& m, const at::Tensor& x, const std::string& probe) {
  host::CaptureWants w;
  w.inputs_q = true;
  return host::capture_inputs(m, 0, m.blocks()[0], probe, x, at::Tensor(), 4, w).inputs_q;
}

// Pre-process `id` on block 0 with `params`, as the pipeline runs it.
inline void run_preprocess(const std::string& id, host::Model& m, const at::Tensor& x,
                           const std::map<std::string, std::string>& params) {
  const host::Component* c = plugin_registry().find(id);
  ASSERT_NE(c, nullptr) << plugin_refusals();
  const host::BlockScope scope = host::preprocess_scope(m, 0, x, 4);
  host::ModelServices services(m, host::PostprocessContext{}, &scope);
  host::ParamValues values(id, c->desc->params, c->desc->param_count, params);
  host::run_preprocess_block(*c, values, services);
}

// Pre-process `id` on block 0 of the model in `dir` without calibration
// statistics (a scope that has none, as outside the pipeline) is refused with
// a message that names --calib.
inline void expect_refused_without_statistics(const std::string& id, const std::string& dir) {
  host::Model m = host::Model::load(dir, at::kFloat);
  const host::Component* c = plugin_registry().find(id);
  ASSERT_NE(c, nullptr) << plugin_refusals();
  host::BlockScope scope{0, at::zeros({1, 4, 64}), at::Tensor(), {}, {}};  // no statistics
  host::ModelServices services(m, host::PostprocessContext{}, &scope);
  host::ParamValues values(id, c->desc->params, c->desc->param_count, {});
  try {
    host::run_preprocess_block(*c, values, services);
    FAIL() << "expected a refusal";
  } catch (const host::PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("--calib"), std::string::npos) << e.what();
  }
}

// The weights of block `b`'s linears `names` (suffixes), concatenated along
// the outputs (copies).
inline at::Tensor stacked(host::Block& b, const std::vector<std::string>& names) {
  std::vector<at::Tensor> w;
  for (const auto& n : names) w.push_back(b.find(n)->weight.clone());
  return at::cat(w);
}

}  // namespace qforge::test
