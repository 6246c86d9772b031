// The column-form reference of GPTQ: gptq.py's fasterquant (IST-DASLab/gptq;
// Frantar et al., 2023, Algorithm 1) transcribed in LibTorch ops, whole
// columns at a time, Hinv through the explicit Cholesky inverse as gptq.py
// computes it. It is slow and plain on purpose: the spec gptq.cpp is tested
// against (plugins/gptq/test). What it shares with gptq.cpp is the grid
// (grid.hpp) and the settings, including qforge's two choices: the grid of a
// per-channel group is computed after the dead inputs are zeroed, and
// act-order sorts stably.
#include "gptq.hpp"

#include <algorithm>
#include <tuple>
#include <utility>

namespace qforge::gptq {
namespace {

// quant.py's find_params over the rows of x [out, n]: scale and zero [out].
std::pair<at::Tensor, at::Tensor> find_params(const at::Tensor& x, const grid::Spec& spec) {
  const at::Tensor rows = x.contiguous();
  at::Tensor scale = at::empty({rows.size(0)}), zero = at::empty({rows.size(0)});
  for (int64_t r = 0; r < rows.size(0); ++r) {
    const grid::Grid g =
        grid::find_params(rows.data_ptr<float>() + r * rows.size(1), rows.size(1), spec);
    scale[r] = g.scale;
    zero[r] = g.zero;
  }
  return {scale, zero};
}

}  // namespace

Result gptq_ref(const Settings& s, at::Tensor W, at::Tensor H) {
  W = W.clone();
  H = H.clone();
  const int64_t columns = W.size(1), groupsize = s.group_size, blocksize = s.block_size;
  const double maxq = s.grid.maxq();
  Result result;
  result.groups = (columns + groupsize - 1) / groupsize;

  const at::Tensor dead = H.diagonal().eq(0);
  result.dead_inputs = dead.sum().item<int64_t>();
  H.diagonal().masked_fill_(dead, 1);
  W.masked_fill_(dead.unsqueeze(0), 0);

  std::vector<std::pair<at::Tensor, at::Tensor>> groups;
  if (s.static_groups)
    for (int64_t i = 0; i < columns; i += groupsize)
      groups.push_back(find_params(W.narrow(1, i, std::min(groupsize, columns - i)), s.grid));

  at::Tensor perm = at::arange(columns, at::kLong);
  if (s.desc_act) {
    perm = std::get<1>(at::sort(H.diagonal(), /*stable=*/true, 0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }

  at::Tensor Q = at::zeros_like(W), C = at::zeros_like(W);
  H.diagonal().add_(s.percdamp * H.diagonal().mean().item<double>());
  const at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(H)),
                                              /*upper=*/true);
  result.percdamp_used = s.percdamp;

  at::Tensor scale, zero;
  for (int64_t i1 = 0; i1 < columns; i1 += blocksize) {
    const int64_t i2 = std::min(i1 + blocksize, columns), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone(), Err1 = at::zeros_like(W1);
    const at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count);
    for (int64_t i = 0; i < count; ++i) {
      const at::Tensor w = W1.select(1, i), d = Hinv1[i][i];
      if (s.static_groups)
        std::tie(scale, zero) = groups[perm[i1 + i].item<int64_t>() / groupsize];
      else if ((i1 + i) % groupsize == 0)  // the outer W: as of the block's start
        std::tie(scale, zero) =
            find_params(W.narrow(1, i1 + i, std::min(groupsize, columns - i1 - i)), s.grid);
      const at::Tensor q = (at::round(w / scale) + zero).clamp(0, maxq);
      const at::Tensor wq = scale * (q - zero);
      const at::Tensor err1 = (w - wq) / d;
      W1.narrow(1, i, count - i)
          .sub_(err1.unsqueeze(1) * Hinv1[i].narrow(0, i, count - i).unsqueeze(0));
      Err1.select(1, i).copy_(err1);
      Q.select(1, i1 + i).copy_(wq);
      C.select(1, i1 + i).copy_(q);
      result.hessian_error += 0.5 * err1.to(at::kDouble).pow(2).sum().item<double>();
    }
    if (i2 < columns)
      W.narrow(1, i2, columns - i2)
          .sub_(Err1.mm(Hinv.narrow(0, i1, count).narrow(1, i2, columns - i2)));
  }

  const at::Tensor invperm = at::argsort(perm);
  result.Q = Q.index_select(1, invperm);
  result.codes = C.index_select(1, invperm).to(at::kByte);
  result.g_idx.resize(static_cast<size_t>(columns));
  for (int64_t j = 0; j < columns; ++j) {
    const int64_t input = perm[j].item<int64_t>();
    result.g_idx[input] = static_cast<int32_t>((s.static_groups ? input : j) / groupsize);
  }
  return result;
}

}  // namespace qforge::gptq
