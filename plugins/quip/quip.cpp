// QuIP (quip.hpp). The steps, as research/onecomp.md §4.1 lays out OneComp's
// port of the paper's code, with what it lacks:
//
//   1. pre-rescaling (§4.1 step 2): s_j = (H_jj / (WᵀW)_jj)^¼, W ← W diag(s),
//      H ← diag(s)⁻¹ H diag(s)⁻¹ (balances weight and Hessian energy);
//   2. incoherence processing (paper §4, Alg. 1): W̃ = U W Vᵀ, H̃ = V H Vᵀ with
//      randomized Hadamard transforms U, V (stored: seeds, signs, base); U
//      only with the per-tensor grid (quip.hpp, Settings::output_transform);
//   3. LDLQ (paper §3, eq. 3: Ŵ_k = Q(W_k + (W_{1:k−1} − Ŵ_{1:k−1}) a_k) with
//      H = (Ů + I) D (Ů + I)ᵀ), computed in the equivalent OPTQ form (paper
//      Theorem 6): with H̃⁻¹ = MᵀM (M upper), the error of column k,
//      (w_k − ŵ_k)/M_kk, is fed into the later columns through row k of M;
//   4. optional greedy passes (paper §5's coordinate descent on the proxy
//      loss tr((Ŵ − W̃) H̃ (Ŵ − W̃)ᵀ));
//   5. the grid: per tensor (paper and OneComp: 2^b levels spanning
//      [−2.4 RMS, 2.4 RMS], no zero level) or min/max per row and group.
#include "quip.hpp"

#include <qforge/cpp/grid.hpp>
#include <qforge/cpp/hessian.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cmath>
#include <random>
#include <vector>

namespace qforge::quip {
namespace {

using at::Tensor;
namespace qk = qforge::kernels;

// Each row of the contiguous float32 m ← T m (or Tᵀ m).
void apply_rows(const qk::RandomizedHadamard& t, Tensor& m, bool transpose) {
  float* p = m.data_ptr<float>();
  const int64_t n = m.size(1);
  at::parallel_for(0, m.size(0), 16, [&](int64_t a, int64_t b) { t.apply(p + a * n, b - a, n, transpose); });
}

// U M Vᵀ for M [n, m] (transpose: Uᵀ M V); a transform without `t` is the identity.
Tensor sandwich(const Transform& u, const Tensor& m, const Transform& v, bool transpose) {
  Tensor r = m.contiguous().clone();
  if (v.t) apply_rows(*v.t, r, transpose);  // rows: M Vᵀ (or M V)
  if (!u.t) return r;
  Tensor c = r.t().contiguous();
  apply_rows(*u.t, c, transpose);  // columns: U (M Vᵀ) (or Uᵀ (M V))
  return c.t().contiguous();
}

// The code of w on grid g: round(w / scale + zero), clamped. The same as
// grid::code_of for integer zero points; the per-tensor grid's zero point
// (2^b − 1)/2 is a half-integer, so the rounding comes after adding it.
float code_on(float w, const grid::Grid& g, float maxq) {
  return std::min(std::max(std::nearbyint(w / g.scale + g.zero), 0.f), maxq);
}

}  // namespace

Transform make_transform(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> signs(static_cast<size_t>(n));
  for (float& v : signs) v = (rng() >> 63) ? -1.f : 1.f;
  Transform t;
  qk::HadamardSplit split = qk::hadamard_split(n);
  std::vector<float> b;
  if (split.pow2 > 0) {  // (H_{2^a} ⊗ H_r/√r)
    if (split.base > 1) {
      b = qk::hadamard_matrix(split.base);
      for (float& v : b) v /= std::sqrt(static_cast<float>(split.base));
    }
  } else {  // H_{2^a} ⊗ Q, Q random orthogonal on the odd part r, regenerated from its seed
    split.pow2 = 1;
    while (n % (split.pow2 * 2) == 0) split.pow2 *= 2;
    split.base = n / split.pow2;
    if (split.base > 1024)
      invalid_argument("QuIP: no transform for size " + std::to_string(n) + " (its odd part " +
                       std::to_string(split.base) + " is above 1024)");
    t.hadamard_base = false;
    t.base_seed = rng() >> 11;  // < 2^53: exact in JSON
    b = qk::random_orthogonal(split.base, t.base_seed);
  }
  t.t = std::make_shared<const qk::RandomizedHadamard>(split.pow2, split.base, std::move(signs),
                                                       std::move(b));
  return t;
}

Result quantize(const Host& host, const Tensor& W0, const Tensor& H0, const Settings& s) {
  const int64_t n = W0.size(0), m = W0.size(1);
  Tensor W = W0.to(at::kFloat).contiguous().clone();
  Tensor H = H0.to(at::kFloat).contiguous().clone();
  Result r;

  // 1. pre-rescaling
  r.rescale = at::ones({m}, at::kFloat);
  if (s.rescale) {  // stored as float16: rounded before it is used
    const Tensor hd = H.diagonal().clamp_min(1e-12), wd = (W * W).sum(0).clamp_min(1e-12);
    r.rescale = (hd / wd).pow(0.25).clamp(1e-4, 1e4).to(at::kHalf).to(at::kFloat).contiguous();
    W.mul_(r.rescale);
    H.div_(r.rescale.unsqueeze(0) * r.rescale.unsqueeze(1));
  }

  // 2. incoherence: W̃ = U W Vᵀ, H̃ = V H Vᵀ
  if (s.output_transform) r.u = make_transform(n, s.seed * 2 + 1);
  r.v = make_transform(m, s.seed * 2 + 2);
  Tensor Wt = sandwich(r.u, W, r.v, false);
  Tensor Ht = sandwich(r.v, H, r.v, false);
  Ht = (Ht + Ht.t()) * 0.5;  // symmetric to rounding

  // 3. LDLQ in OPTQ form, the grid chosen per group as its first column is reached.
  hessian::remove_dead_inputs(Ht, Wt);
  const Tensor Wt0 = Wt.clone();  // W̃ before LDLQ feeds its errors into it
  const hessian::Dampened damp = hessian::dampened_cholesky_inverse(Ht, s.percdamp, host, "QuIP");
  r.percdamp_used = damp.percdamp;
  const Tensor& M = damp.Hinv;
  grid::Spec spec;
  spec.bits = s.bits;
  spec.sym = s.sym;
  spec.mse = s.mse;
  spec.half_scales = true;
  const float maxq = spec.maxq();
  r.group_size = s.per_tensor ? m : s.group_size;
  const int64_t groups = (m + r.group_size - 1) / r.group_size;
  r.scales = at::empty({n, groups}, at::kFloat);
  r.zeros = at::empty({n, groups}, at::kFloat);
  r.codes = at::empty({n, m}, at::kByte);
  grid::Grid tensor_grid{};
  if (s.per_tensor) {  // 2^b levels over [−2.4 RMS, 2.4 RMS]: scale 2·2.4 RMS/maxq, zero maxq/2
    const float rms = Wt.pow(2).mean().sqrt().item<float>();
    const float scale = static_cast<float>(c10::Half(2.f * (2.4f * rms + 1e-16f) / maxq));
    tensor_grid = grid::Grid{std::max(scale, 5.9604645e-08f), maxq / 2};
  }
  std::vector<grid::Grid> row_grid(static_cast<size_t>(n));
  Tensor Q = at::empty({n, m}, at::kFloat);
  float* w = Wt.data_ptr<float>();
  float* q = Q.data_ptr<float>();
  float* sc = r.scales.data_ptr<float>();
  float* zr = r.zeros.data_ptr<float>();
  uint8_t* codes = r.codes.data_ptr<uint8_t>();
  const Tensor Mc = M.contiguous();
  const float* mk = Mc.data_ptr<float>();
  constexpr int64_t kBlock = 128;  // lazy batch updates (OPTQ §4, "Step 2")
  for (int64_t b0 = 0; b0 < m; b0 += kBlock) {
    const int64_t b1 = std::min(m, b0 + kBlock);
    Tensor E = at::empty({n, b1 - b0}, at::kFloat);
    float* e = E.data_ptr<float>();
    for (int64_t k = b0; k < b1; ++k) {
      if (k % r.group_size == 0) {
        const int64_t g = k / r.group_size, len = std::min(r.group_size, m - k);
        at::parallel_for(0, n, 64, [&](int64_t a, int64_t b) {
          for (int64_t o = a; o < b; ++o) {
            row_grid[o] = s.per_tensor ? tensor_grid : grid::find_params(w + o * m + k, len, spec);
            sc[o * groups + g] = row_grid[o].scale;
            zr[o * groups + g] = row_grid[o].zero;
          }
        });
      }
      const float d = mk[k * m + k];
      for (int64_t o = 0; o < n; ++o) {
        const float c = code_on(w[o * m + k], row_grid[o], maxq);
        codes[o * m + k] = static_cast<uint8_t>(c);
        q[o * m + k] = grid::value_of(c, row_grid[o]);
        const float ek = (w[o * m + k] - q[o * m + k]) / d;
        e[o * (b1 - b0) + (k - b0)] = ek;
        for (int64_t j = k + 1; j < b1; ++j) w[o * m + j] -= ek * mk[k * m + j];
      }
    }
    if (b1 < m) Wt.narrow(1, b1, m - b1).sub_(E.mm(Mc.narrow(0, b0, b1 - b0).narrow(1, b1, m - b1)));
  }

  // 4. greedy passes: each column re-rounded to its best value given the others,
  //    ŵ_k = Q(w_k − Σ_{j≠k} (ŵ_j − w_j) H_jk / H_kk) on the original W̃.
  for (int pass = 0; pass < s.greedy_passes; ++pass) {
    Tensor E = Q - Wt0;  // [n, m]
    for (int64_t k = 0; k < m; ++k) {
      const float hkk = Ht.data_ptr<float>()[k * m + k];
      const Tensor t = Wt0.select(1, k) - (E.mv(Ht.select(1, k)) - E.select(1, k) * hkk) / hkk;
      const int64_t g = k / r.group_size;
      const Tensor tc = t.contiguous();
      const float* tv = tc.data_ptr<float>();
      for (int64_t o = 0; o < n; ++o) {
        const grid::Grid gr{sc[o * groups + g], zr[o * groups + g]};
        const float c = code_on(tv[o], gr, maxq);
        codes[o * m + k] = static_cast<uint8_t>(c);
        q[o * m + k] = grid::value_of(c, gr);
      }
      E.select(1, k).copy_(Q.select(1, k) - Wt0.select(1, k));
    }
  }
  const Tensor D = Q - Wt0;
  r.proxy_loss = (D.mm(Ht) * D).sum().item<double>() / std::max((Wt0.mm(Ht) * Wt0).sum().item<double>(), 1e-30);

  // Ŵ = Uᵀ Q̂ V diag(1/s)
  r.dequantized = sandwich(r.u, Q, r.v, true).div_(r.rescale);
  return r;
}

}  // namespace qforge::quip
