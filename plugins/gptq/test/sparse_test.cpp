// SparseGPT in the GPTQ core (gptq.hpp: prune_n / prune_m / sparsity): the
// N:M pattern holds exactly (2 zeros in every 4 consecutive inputs of every
// row), pruned weights are exactly 0 with or without quantization (the
// grid's zero point), OBS compensation beats magnitude pruning on the
// output error tr((W − Ŵ) H (W − Ŵ)ᵀ), unstructured pruning reaches its
// ratio, and what can't be pruned is refused.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "gptq.hpp"
#include "qforge_host/plugins/services.hpp"
#include "support/plugins.hpp"

namespace {

using qforge::gptq::Result;
using qforge::gptq::Settings;

Result run(const Settings& s, const at::Tensor& w, const at::Tensor& h) {
  return qforge::gptq::gptq(qforge::Host(qforge::host::services()), s, w.clone(), h.clone());
}

double output_error(const at::Tensor& w, const at::Tensor& q, const at::Tensor& h) {
  const at::Tensor d = (w - q).to(at::kDouble);
  return d.mm(h.to(at::kDouble)).mul(d).sum().item<double>();
}

// Magnitude pruning, the baseline: in every group of m along a row, the n smallest |w|.
at::Tensor magnitude_n_of_m(const at::Tensor& w, int64_t n, int64_t m) {
  const at::Tensor g = w.reshape({w.size(0), -1, m});
  const at::Tensor idx = std::get<1>(g.abs().topk(n, 2, /*largest=*/false));
  return g.scatter(2, idx, 0.0).reshape(w.sizes());
}

Settings two_of_four(bool quantize) {
  Settings s;
  s.prune_n = 2;
  s.prune_m = 4;
  s.quantize = quantize;
  s.grid.bits = 4;
  s.grid.sym = false;
  s.grid.zero_min = 1;
  s.group_size = 32;
  s.block_size = 64;
  return s;
}

TEST(SparseGpt, TwoOfFourIsExactAndBeatsMagnitude) {
  const at::Tensor w = qforge::test::gaussian({48, 128}, 1);
  const at::Tensor h = qforge::test::synthetic_hessian(128, 2);
  const Result r = run(two_of_four(false), w, h);
  const at::Tensor zeros_per_group = r.Q.reshape({48, 32, 4}).eq(0).sum(2);
  EXPECT_TRUE(zeros_per_group.eq(2).all().item<bool>());
  // The kept weights moved (OBS compensation), and the output error is lower.
  EXPECT_FALSE(at::equal(r.Q.ne(0).to(at::kFloat) * w, r.Q));
  const double sparse = output_error(w, r.Q, h), magnitude = output_error(w, magnitude_n_of_m(w, 2, 4), h);
  EXPECT_LT(sparse, 0.7 * magnitude) << sparse << " vs " << magnitude;
}

TEST(SparseGpt, TwoOfFourWithFourBitsKeepsTheZerosExact) {
  const at::Tensor w = qforge::test::gaussian({40, 96}, 3);
  const at::Tensor h = qforge::test::synthetic_hessian(96, 4);
  const Result r = run(two_of_four(true), w, h);
  EXPECT_TRUE(r.Q.reshape({40, 24, 4}).eq(0).sum(2).ge(2).all().item<bool>());
  // A pruned weight's code is its group's zero point.
  for (int64_t o = 0; o < 40; ++o)
    for (int64_t j = 0; j < 96; ++j) {
      if (r.Q[o][j].item<float>() != 0.f) continue;
      ASSERT_EQ(r.codes[o][j].item<uint8_t>(), static_cast<uint8_t>(r.grids[(j / 32) * 40 + o].zero));
    }
  // Pruning and quantizing in one pass beats pruning first and quantizing alone afterwards.
  Settings dense = two_of_four(true);
  dense.prune_n = dense.prune_m = 0;
  const Result then_quantized = run(dense, run(two_of_four(false), w, h).Q, h);
  EXPECT_LT(output_error(w, r.Q, h), output_error(w, then_quantized.Q, h) * 1.05);
}

TEST(SparseGpt, UnstructuredReachesItsRatio) {
  const at::Tensor w = qforge::test::gaussian({32, 128}, 5);
  const at::Tensor h = qforge::test::synthetic_hessian(128, 6);
  Settings s = two_of_four(false);
  s.prune_n = s.prune_m = 0;
  s.sparsity = 0.5;
  const Result r = run(s, w, h);
  EXPECT_EQ(r.Q.eq(0).sum().item<int64_t>(), 32 * 128 / 2);
  // Magnitude pruning to the same ratio over the whole matrix.
  const at::Tensor keep = w.abs().ge(std::get<0>(w.abs().flatten().kthvalue(32 * 128 / 2 + 1)));
  EXPECT_LT(output_error(w, r.Q, h), 0.7 * output_error(w, w * keep, h));
}

TEST(SparseGpt, RefusesWhatItCannotPrune) {
  const at::Tensor w = qforge::test::gaussian({8, 64}, 7), h = qforge::test::synthetic_hessian(64, 8);
  Settings s = two_of_four(false);
  s.desc_act = true;  // groups of 4 along another order
  EXPECT_THROW(run(s, w, h), qforge::Error);
  s = two_of_four(false);
  s.block_size = 30;  // not a multiple of 4
  EXPECT_THROW(run(s, w, h), qforge::Error);
  s = two_of_four(false);
  s.prune_n = 5;
  EXPECT_THROW(run(s, w, h), qforge::Error);
}

}  // namespace
