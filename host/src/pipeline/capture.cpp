#include "qforge_host/pipeline/capture.hpp"

#include <ATen/ATen.h>

#include <utility>

namespace qforge::host {

void GramAccumulator::add(const at::Tensor& x, const at::Tensor& x_fp) {
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

GramAccumulator capture_inputs(Model& model, size_t block, Block& original,
                               const std::string& probe, const at::Tensor& x,
                               const at::Tensor& x_fp, int64_t chunk) {
  GramAccumulator acc;
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
    if (x_fp.defined()) {
      std::swap(model.blocks()[block], original);
      captured_fp = capture(x_fp, s, m);
      std::swap(model.blocks()[block], original);
    }
    acc.add(captured, captured_fp);
  }
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

}  // namespace qforge::host
