// SparseGPT in the GPTQ core (gptq.hpp: prune_n / prune_m / sparsity): the
// N:M pattern holds exactly (2 zeros in every 4 consecutive inputs of every
// row), pruned weights are exactly 0 with or without quantization (the
// grid's zero point) and, quantized, kept weights never round to 0 (uniform
// sym / asym, FP8), OBS compensation beats magnitude pruning on the
// output error tr((W − Ŵ) H (W − Ŵ)ᵀ), unstructured pruning reaches its
// ratio, and what can't be pruned is refused.
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "gptq.hpp"
#include "qforge_host/plugins/services.hpp"
#include "support/plugins.hpp"

namespace {

namespace grid = qforge::grid;
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

// Every group of 4 along a row of `q` [out, in] holds exactly 2 zeros.
bool exactly_two_of_four(const at::Tensor& q) {
  return q.reshape({q.size(0), -1, 4}).eq(0).sum(2).eq(2).all().item<bool>();
}

TEST(SparseGpt, TwoOfFourWithFourBitsKeepsTheZerosExact) {
  const at::Tensor w = qforge::test::gaussian({40, 96}, 3);
  const at::Tensor h = qforge::test::synthetic_hessian(96, 4);
  for (bool sym : {false, true}) {
    SCOPED_TRACE(sym ? "sym" : "asym");
    Settings s = two_of_four(true);
    s.grid.sym = sym;
    const Result r = run(s, w, h);
    // Exactly 2:4: no kept weight is quantized to 0 (its grid's zero point).
    EXPECT_TRUE(exactly_two_of_four(r.Q));
    for (int64_t o = 0; o < 40; ++o)
      for (int64_t j = 0; j < 96; ++j) {
        const grid::Grid& g = r.grids[(j / 32) * 40 + o];
        const bool zero = r.Q[o][j].item<float>() == 0.f;
        ASSERT_EQ(zero, r.codes[o][j].item<uint8_t>() == static_cast<uint8_t>(g.zero)) << o << "," << j;
        ASSERT_EQ(r.Q[o][j].item<float>(), grid::value_of(r.codes[o][j].item<uint8_t>(), g));
      }
    // Pruning and quantizing in one pass beats pruning first and quantizing alone afterwards.
    Settings dense = s;
    dense.prune_n = dense.prune_m = 0;
    Settings prune_only = s;
    prune_only.quantize = false;
    const Result then_quantized = run(dense, run(prune_only, w, h).Q, h);
    EXPECT_LT(output_error(w, r.Q, h), output_error(w, then_quantized.Q, h) * 1.05);
  }
}

// Weights that round to 0 on a coarse grid: many kept weights would become
// zeros without the non-zero rule (2 bits, one group per row, an outlier).
TEST(SparseGpt, KeptWeightsNeverRoundToZero) {
  at::Tensor w = qforge::test::gaussian({16, 64}, 11) * 0.05;
  w.select(1, 5).fill_(4.f);
  const at::Tensor h = qforge::test::synthetic_hessian(64, 12);
  for (bool sym : {false, true}) {
    Settings s = two_of_four(true);
    s.grid.bits = 2;
    s.grid.sym = sym;
    s.group_size = 64;
    const Result r = run(s, w, h);
    EXPECT_TRUE(exactly_two_of_four(r.Q)) << (sym ? "sym" : "asym");
  }
  Settings fp8 = two_of_four(true);
  fp8.codebook = Settings::Codebook::fp8_e4m3;
  fp8.grid.bits = 8;
  fp8.grid.sym = true;
  fp8.grid.half_scales = true;
  fp8.group_size = 64;
  at::Tensor tiny = w * 0.1;
  tiny.select(1, 63).fill_(1e4f);  // e4m3 flushes the other weights of each row to 0
  const Result r = run(fp8, tiny, h);
  EXPECT_TRUE(exactly_two_of_four(r.Q)) << "fp8";
  // The zeros are e4m3's ±0 bytes, the rest are not.
  EXPECT_TRUE(at::equal(r.Q.eq(0), r.codes.bitwise_and(0x7F).eq(0)));
}

TEST(SparseGpt, WithoutAMaskWeightsMayRoundToZero) {
  // Without a mask the non-zero rule is off: weights that round to 0 stay 0.
  at::Tensor w = qforge::test::gaussian({16, 64}, 13) * 0.05;
  w.select(1, 5).fill_(4.f);
  Settings s = two_of_four(true);
  s.prune_n = s.prune_m = 0;
  s.grid.bits = 2;
  s.group_size = 64;
  const Result r = run(s, w, qforge::test::synthetic_hessian(64, 14));
  EXPECT_GT(r.Q.eq(0).sum().item<int64_t>(), 16 * 64 / 2);
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
