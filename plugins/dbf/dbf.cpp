// Double binary factorization (dbf.hpp). The steps follow OneComp's DBF
// (research/onecomp.md §3.2: FujitsuResearch/OneCompression
// onecomp/quantizer/dbf/dbf_original.py and balance.py), which implements
// Boža & Macko 2025 (arXiv 2505.11076, §3: alternating ADMM on the two
// factors with a scaled-sign projection):
//
//   1. (data-aware) weight the columns by √diag(H): the layer's output error
//      ‖(W − Ŵ)X‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ) ≈ Σ_j H_jj ‖(W − Ŵ)_:,j‖²;
//   2. Sinkhorn-balance rows and columns (row norms α, column norms nα/m);
//   3. alternate: A-step with B's rows normalised, B-step with A's columns
//      normalised, each 3 ADMM iterations projecting onto SVID matrices
//      diag(a)·sign(M)·diag(b) (the penalty ρ warmed up cubically, adapted
//      by Boyd's residual balancing);
//   4. undo 2 and 1 on the factors and split each SVID factor into its sign
//      plane and two scale vectors: s4 = u_A, s2 = v_A ⊙ mid ⊙ u_B, s0 = v_B;
//   5. (data-aware) fit s4, s2, s0 to the output error with the full H, in
//      closed form, for the signs found.
//
// Better than OneComp where it is weak: the Hessian is used (OneComp's
// default balancing ignores it), the start is the truncated SVD (OneComp:
// an unseeded Gaussian), the power iterations start from ones (OneComp:
// random), and a stopping rule on the relative error ends the loop.
#include "dbf.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <stdexcept>

namespace qforge::dbf {
namespace {

using at::Tensor;

// |M| ≈ σ·u·vᵀ by power iteration from v = 1; returns (√σ·u, √σ·v).
std::pair<Tensor, Tensor> rank1_abs(const Tensor& m, int iters) {
  const Tensor a = m.abs();
  Tensor v = at::ones({a.size(1)}, a.options());
  Tensor u;
  double sigma = 0;
  for (int t = 0; t < iters; ++t) {
    u = a.mv(v);
    u.div_(std::max(u.norm().item<double>(), 1e-30));
    v = a.t().mv(u);
    sigma = v.norm().item<double>();
    v.div_(std::max(sigma, 1e-30));
  }
  const double r = std::sqrt(sigma);
  return {u * r, v * r};
}

Tensor sign_of(const Tensor& m) { return at::where(m >= 0, 1.0, -1.0).to(m.scalar_type()); }

// SVID projection (sign-value-independent decomposition): the closest
// diag(a)·sign(M)·diag(b) in the sense of the rank-1 fit of |M|.
Tensor svid(const Tensor& m) {
  auto [u, v] = rank1_abs(m, 10);
  return u.unsqueeze(1) * sign_of(m) * v.unsqueeze(0);
}

// Sinkhorn balancing: diag(dr)·W·diag(dc) with row norms ≈ α and column
// norms ≈ nα/m (ℓ1, or squared ℓ2), the gauge fixed after each sweep; stops
// after `iters` sweeps or when both residuals stay below 1e-3 for 3 sweeps.
std::pair<Tensor, Tensor> balance(const Tensor& w, const Settings& s) {
  const int64_t n = w.size(0), m = w.size(1);
  const double alpha = s.balance_alpha, beta = alpha * n / m;
  Tensor mag = s.balance_l2 ? w.pow(2) : w.abs();
  Tensor dr = at::ones({n}, w.options()), dc = at::ones({m}, w.options());
  const double p = s.balance_l2 ? 2.0 : 1.0;  // norms scale as d^p
  int calm = 0;
  for (int64_t it = 0; it < s.balance_iters && calm < 3; ++it) {
    Tensor rows = (mag * dc.pow(p).unsqueeze(0)).sum(1) * dr.pow(p);
    dr.mul_((alpha / rows.clamp_min(1e-30)).pow(1.0 / p));
    Tensor cols = (mag * dr.pow(p).unsqueeze(1)).sum(0) * dc.pow(p);
    dc.mul_((beta / cols.clamp_min(1e-30)).pow(1.0 / p));
    const double g = std::sqrt(dr.mean().item<double>() / dc.mean().item<double>());
    dr.div_(g);
    dc.mul_(g);
    rows = (mag * dc.pow(p).unsqueeze(0)).sum(1) * dr.pow(p);
    cols = (mag * dr.pow(p).unsqueeze(1)).sum(0) * dc.pow(p);
    const double kkt = std::max((rows / alpha - 1).abs().max().item<double>(),
                                (cols / beta - 1).abs().max().item<double>());
    calm = kkt < 1e-3 ? calm + 1 : 0;
  }
  return {dr, dc};
}

// min_R ‖T − L·R‖² + reg·mean(diag LᵀL)·‖R‖² over SVID matrices R, by three
// ADMM iterations from (Z, U) (updated in place), the penalty ρ starting at
// `rho` (OneComp's find_other2).
void admm(const Tensor& l, const Tensor& t, Tensor& z, Tensor& u, double rho, const Settings& s) {
  Tensor ltl = l.t().mm(l);
  ltl.diagonal().add_(s.reg * ltl.diagonal().mean().item<double>());
  const Tensor ltt = l.t().mm(t);
  const Tensor eye = at::eye(ltl.size(0), ltl.options());
  for (int it = 0; it < 3; ++it) {
    const Tensor chol = at::linalg_cholesky(ltl + rho * eye);
    const Tensor p = at::cholesky_solve(ltt + rho * (z - u), chol);
    const Tensor z_prev = z;
    z = svid(p + u);
    u = u + p - z;
    if (!s.adaptive_rho) continue;
    const double primal = (p - z).norm().item<double>();
    const double dual = rho * (z - z_prev).norm().item<double>();
    if (primal > 10 * dual) {
      rho *= 2;
      u = u / 2;
    } else if (dual > 10 * primal) {
      rho /= 2;
      u = u * 2;
    }
    rho = std::clamp(rho, 1e-6, 1e6);
  }
}

// A seeded standard normal matrix (the same on every machine).
Tensor gaussian(int64_t rows, int64_t cols, uint64_t seed) {
  std::mt19937_64 gen(seed);
  Tensor g = at::empty({rows, cols}, at::kFloat);
  float* p = g.data_ptr<float>();
  for (int64_t i = 0; i < rows * cols; i += 2) {
    const double u1 = (static_cast<double>(gen() >> 11) + 1) * 0x1.0p-53;
    const double u2 = static_cast<double>(gen() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2 * std::log(u1));
    p[i] = static_cast<float>(r * std::cos(2 * M_PI * u2));
    if (i + 1 < rows * cols) p[i + 1] = static_cast<float>(r * std::sin(2 * M_PI * u2));
  }
  return g;
}

// The starting factors of T [n, m]: the truncated SVD split evenly
// (A = U√Σ, B = √ΣVᵀ), extra columns past min(n, m) small Gaussians.
std::pair<Tensor, Tensor> start(const Tensor& t, int64_t k, const Settings& s) {
  const int64_t n = t.size(0), m = t.size(1);
  if (!s.svd_init) return {gaussian(n, k, s.seed), gaussian(k, m, s.seed + 1)};
  auto [U, S, Vh] = at::linalg_svd(t, /*full_matrices=*/false);
  const int64_t r = std::min(k, S.size(0));
  Tensor root = S.narrow(0, 0, r).sqrt();
  Tensor a = at::zeros({n, k}, t.options()), b = at::zeros({k, m}, t.options());
  a.narrow(1, 0, r).copy_(U.narrow(1, 0, r) * root.unsqueeze(0));
  b.narrow(0, 0, r).copy_(Vh.narrow(0, 0, r) * root.unsqueeze(1));
  if (r < k) {  // over-complete: the rest starts small, seeded
    const double scale = 1e-2 * root.mean().item<double>();
    a.narrow(1, r, k - r).copy_(gaussian(n, k - r, s.seed) * scale);
    b.narrow(0, r, k - r).copy_(gaussian(k - r, m, s.seed + 1) * scale);
  }
  return {a, b};
}

// The three scale vectors that minimise the layer's output error
// tr((W − Ŵ)·H·(W − Ŵ)ᵀ) for fixed sign planes, one vector at a time in
// closed form (each is a linear least-squares problem), `rounds` times:
//   s4_o = ⟨W_o, R_o⟩_H / ⟨R_o, R_o⟩_H                R = S_A·diag(s2)·S_B·diag(s0)
//   ((PᵀP) ⊙ H)·s0 = Σ_o P_o ⊙ (W·H)_o                P = diag(s4)·S_A·diag(s2)·S_B
//   ((AᵀA) ⊙ (B·H·Bᵀ))·s2 = diag(Aᵀ·W·H·Bᵀ)           A = diag(s4)·S_A, B = S_B·diag(s0)
// In float64, with a ridge of 1e-6·mean diag on each system.
void refine_scales(Tensor& s4, Tensor& s2, Tensor& s0, const Tensor& sa, const Tensor& sb,
                   const Tensor& w, const Tensor& h, int rounds) {
  const auto f64 = at::kDouble;
  const Tensor W = w.to(f64), H = h.to(f64), SA = sa.to(f64), SB = sb.to(f64), WH = W.mm(H);
  Tensor a4 = s4.to(f64), a2 = s2.to(f64), a0 = s0.to(f64);
  auto solve = [](Tensor g, const Tensor& rhs) {
    g.diagonal().add_(1e-6 * g.diagonal().abs().mean().item<double>() + 1e-30);
    return at::linalg_solve(g, rhs);
  };
  for (int r = 0; r < rounds; ++r) {
    const Tensor M = (SA * a2.unsqueeze(0)).mm(SB);  // S_A diag(s2) S_B
    const Tensor R = M * a0.unsqueeze(0);
    a4 = (WH * R).sum(1) / (R.mm(H) * R).sum(1).clamp_min(1e-30);
    const Tensor P = M * a4.unsqueeze(1);
    a0 = solve(P.t().mm(P) * H, (P * WH).sum(0));
    const Tensor A = SA * a4.unsqueeze(1), B = SB * a0.unsqueeze(0);
    a2 = solve(A.t().mm(A) * B.mm(H).mm(B.t()), (A.t().mm(WH) * B).sum(1));
  }
  s4 = a4.to(at::kFloat);
  s2 = a2.to(at::kFloat);
  s0 = a0.to(at::kFloat);
}

}  // namespace

int64_t middle_dimension(double bits, int64_t n, int64_t m) {
  return std::max<int64_t>(1, static_cast<int64_t>(std::floor(bits * n * m / double(n + m))));
}

double effective_bits(int64_t k, int64_t n, int64_t m) {
  return (double(k) * (n + m) + 16.0 * (n + k + m)) / (double(n) * m);
}

Factors factorize(const Tensor& w_in, const Tensor& hessian, const Settings& s) {
  const Tensor w = w_in.to(at::kFloat).contiguous();
  const int64_t n = w.size(0), m = w.size(1), k = s.k;
  // 1. Column weights from the Hessian's diagonal (mean 1; dead inputs kept tiny).
  Tensor d = at::ones({m}, w.options());
  if (s.data_aware && s.column_weights && hessian.defined()) {
    d = hessian.diagonal().to(at::kFloat).clamp_min(0).sqrt();
    d = d / d.mean().clamp_min(1e-30);
    d.clamp_min_(1e-4);
  }
  Tensor target = w * d.unsqueeze(0);
  // 2. Balancing.
  Tensor dr = at::ones({n}, w.options()), dc = at::ones({m}, w.options());
  if (s.balance) std::tie(dr, dc) = balance(target, s);
  target = dr.unsqueeze(1) * target * dc.unsqueeze(0);
  const double target_norm = std::max(target.norm().item<double>(), 1e-30);

  // 3. Alternating ADMM on A [n, k] and B [k, m].
  auto [a, b] = start(target, k, s);
  a = svid(a);
  b = svid(b);
  Tensor ua = at::zeros({k, n}, w.options()), ub = at::zeros({k, m}, w.options());
  Tensor za = a.t().contiguous(), zb = b;
  Tensor col_norm = at::ones({k}, w.options());
  double last_error = 1e30;
  Factors f;
  for (int64_t t = 0; t < s.iters; ++t) {
    const double ramp = std::min(1.0, double(t) / std::max<double>(1, s.iters - 3));
    const double rho = 0.03 + 0.97 * ramp * ramp * ramp;
    const Tensor row_norm = zb.norm(2, {1}).clamp_min(1e-30);
    admm(zb.t() / row_norm.unsqueeze(0), target.t(), za, ua, rho, s);  // A-step: Aᵀ [k, n]
    col_norm = za.norm(2, {1}).clamp_min(1e-30);                       // ‖A_:,j‖
    admm(za.t() / col_norm.unsqueeze(0), target, zb, ub, rho, s);      // B-step
    f.iterations = t + 1;
    if (s.tol > 0 && (t + 1) % 10 == 0) {
      const double e = (target - (za.t() / col_norm.unsqueeze(0)).mm(zb)).norm().item<double>() / target_norm;
      if (!std::isfinite(e)) break;
      if (std::abs(last_error - e) < s.tol * std::max(e, 1e-12)) break;
      last_error = e;
    }
  }
  // W_target ≈ A·diag(1/‖A_:,j‖)·B.
  a = za.t().contiguous();
  const Tensor mid = 1.0 / col_norm;
  f.relative_error = (target - (a * mid.unsqueeze(0)).mm(zb)).norm().item<double>() / target_norm;

  // 4. Undo the balancing and the column weights, then split each factor.
  a = a / dr.unsqueeze(1);
  b = zb / (dc * d).unsqueeze(0);
  auto [ua_vec, va_vec] = rank1_abs(a, 5);
  auto [ub_vec, vb_vec] = rank1_abs(b, 5);
  f.sign_a = sign_of(a);
  f.sign_b = sign_of(b);
  Tensor s4 = ua_vec, s2 = va_vec * mid * ub_vec, s0 = vb_vec;
  // 5. (data-aware) the scales that minimise the output error for these signs.
  if (s.data_aware && hessian.defined())
    refine_scales(s4, s2, s0, f.sign_a, f.sign_b, w, hessian, s.scale_rounds);
  // The gauge: s4 and s0 of root-mean-square 1, s2 carrying the magnitude
  // (so float16 holds all three).
  const double g4 = std::max(s4.pow(2).mean().sqrt().item<double>(), 1e-30);
  const double g0 = std::max(s0.pow(2).mean().sqrt().item<double>(), 1e-30);
  auto half = [](const Tensor& x) { return x.to(at::kHalf).to(at::kFloat); };
  f.s4 = half(s4 / g4);
  f.s2 = half(s2 * (g4 * g0));
  f.s0 = half(s0 / g0);
  if (!at::isfinite(reconstruct(f)).all().item<bool>())
    throw std::runtime_error("DBF did not converge to finite factors on this layer");
  return f;
}

Tensor reconstruct(const Factors& f) {
  return f.s4.unsqueeze(1) * (f.sign_a * f.s2.unsqueeze(0)).mm(f.sign_b) * f.s0.unsqueeze(0);
}

}  // namespace qforge::dbf
