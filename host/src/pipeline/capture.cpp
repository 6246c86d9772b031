#include "qforge_host/pipeline/capture.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

#include "qforge_host/train/postprocess.hpp"

namespace qforge::host {

namespace {

// Adds the sequences of x (and x_fp) [S, T, in] to the sums, one sequence at
// a time in order, and keeps the rows that were asked for.
void accumulate(GramAccumulator& acc, const CaptureWants& wants, const at::Tensor& x,
                const at::Tensor& x_fp, std::vector<at::Tensor>& rows_q,
                std::vector<at::Tensor>& rows_fp, at::Tensor& abs_sum) {
  for (int64_t s = 0; s < x.size(0); ++s) {
    at::Tensor xs = x[s].to(at::kFloat);
    if (wants.gram) {
      if (!acc.gram.defined()) acc.gram = at::zeros({xs.size(1), xs.size(1)}, at::kFloat);
      acc.gram.addmm_(xs.t(), xs);
    }
    if (wants.delta) {
      if (!acc.delta.defined()) acc.delta = at::zeros_like(acc.gram);
      acc.delta.addmm_((x_fp[s].to(at::kFloat) - xs).t(), xs);
    }
    if (wants.act_stats) {
      at::Tensor a = xs.abs().sum(0, false, at::kDouble);
      abs_sum = abs_sum.defined() ? abs_sum.add_(a) : a;
    }
    if (wants.act_range) {
      at::Tensor mn = std::get<0>(xs.min(0)), mx = std::get<0>(xs.max(0));
      acc.act_min = acc.act_min.defined() ? at::minimum(acc.act_min, mn) : mn;
      acc.act_max = acc.act_max.defined() ? at::maximum(acc.act_max, mx) : mx;
    }
    if (wants.inputs_q) rows_q.push_back(xs.clone());
    if (wants.inputs_fp) rows_fp.push_back(x_fp[s].to(at::kFloat).clone());
    acc.rows += xs.size(0);
  }
}

}  // namespace

GramAccumulator capture_inputs(Model& model, size_t block, Block& original,
                               const std::string& probe, const at::Tensor& x,
                               const at::Tensor& x_fp, int64_t chunk, const CaptureWants& wants) {
  GramAccumulator acc;
  std::vector<at::Tensor> rows_q, rows_fp;
  at::Tensor abs_sum;
  const bool fp = wants.delta || wants.inputs_fp;
  const int64_t n = x.size(0);
  auto capture = [&](const at::Tensor& stream, int64_t s, int64_t m) {
    at::Tensor captured;
    LinearTap tap = [&](const Linear& l, const at::Tensor& in) {
      if (l.name != probe) return true;
      captured = in;
      return false;  // the rest of the block is not needed
    };
    model.block_forward(block, stream.narrow(0, s, m).to(at::kFloat), 0, nullptr, &tap);
    return captured;
  };
  for (int64_t s = 0; s < n; s += chunk) {
    int64_t m = std::min(chunk, n - s);
    at::Tensor captured = capture(x, s, m), captured_fp;
    if (fp) {
      std::swap(model.blocks()[block], original);
      captured_fp = capture(x_fp, s, m);
      std::swap(model.blocks()[block], original);
    }
    accumulate(acc, wants, captured, captured_fp, rows_q, rows_fp, abs_sum);
  }
  if (wants.inputs_q) acc.inputs_q = at::cat(rows_q);
  if (wants.inputs_fp) acc.inputs_fp = at::cat(rows_fp);
  if (wants.act_stats) acc.act_stats = (abs_sum / static_cast<double>(acc.rows)).to(at::kFloat);
  return acc;
}

at::Tensor forward_block(const Model& model, size_t block, const at::Tensor& x, int64_t chunk) {
  at::Tensor next = at::empty_like(x);
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    int64_t m = std::min(chunk, x.size(0) - s);
    next.narrow(0, s, m).copy_(model.block_forward(block, x.narrow(0, s, m).to(at::kFloat), 0, nullptr, nullptr));
  }
  return next;
}

BlockScope preprocess_scope(Model& model, size_t block, const at::Tensor& x, int64_t chunk) {
  BlockScope scope{block, x, at::Tensor(), {}, {}};
  Model* m = &model;
  scope.input_stats = [m, block, x, chunk](const std::string& probe) {
    CaptureWants wants;
    wants.gram = false;
    wants.act_stats = wants.act_range = true;
    GramAccumulator acc = capture_inputs(*m, block, m->blocks()[block], probe, x, at::Tensor(), chunk, wants);
    return at::stack({acc.act_min, acc.act_max, acc.act_stats});
  };
  scope.input_gram = [m, block, x, chunk](const std::string& probe) {
    CaptureWants wants;  // G only
    GramAccumulator acc = capture_inputs(*m, block, m->blocks()[block], probe, x, at::Tensor(), chunk, wants);
    return acc.gram.div_(static_cast<double>(std::max<int64_t>(acc.rows, 1)));
  };
  return scope;
}

}  // namespace qforge::host
