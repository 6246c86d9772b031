// The result of gptq() as the packed format org.qforge.gptq/1, AutoGPTQ's v1
// layout (qforge/formats/gptq_v1.h): what the GPTQ plugin writes, and any
// plugin running Algorithm 1 with its grid (SparseGPT's quantized output).
#include <qforge/formats/gptq_v1.h>
#include <qforge/formats/pruned_v1.h>
#include <qforge_kernels/bitpack.hpp>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <string>

#include "gptq.hpp"

namespace qforge::gptq {
namespace {

using kernels::pack_bits;
using kernels::words_for;

// qweight [words(in), out]: column o is output o's codes along the input
// (packed as rows of [out, words], then transposed).
at::Tensor pack_qweight(const at::Tensor& codes, int bits) {
  const int64_t out = codes.size(0), in = codes.size(1), words = words_for(in, bits);
  at::Tensor rows = at::empty({out, words}, at::kInt);
  const uint8_t* src = codes.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(rows.data_ptr<int32_t>());
  at::parallel_for(0, out, std::max<int64_t>(1, 65536 / in), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) pack_bits(src + o * in, in, bits, dst + o * words);
  });
  return rows.t().contiguous();
}

// qzeros [groups, words(out)]: row g is zero − 1 of every output.
at::Tensor pack_qzeros(const std::vector<grid::Grid>& grids, int64_t groups, int64_t out,
                       int bits) {
  const int64_t words = words_for(out, bits);
  at::Tensor qzeros = at::empty({groups, words}, at::kInt);
  auto* dst = reinterpret_cast<uint32_t*>(qzeros.data_ptr<int32_t>());
  std::vector<uint8_t> z(static_cast<size_t>(out));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t o = 0; o < out; ++o)
      z[o] = static_cast<uint8_t>(grids[g * out + o].zero - QFORGE_GPTQ_V1_ZERO_OFFSET);
    pack_bits(z.data(), out, bits, dst + g * words);
  }
  return qzeros;
}

// scales float16 [groups, out]
at::Tensor pack_scales(const std::vector<grid::Grid>& grids, int64_t groups, int64_t out) {
  at::Tensor scales = at::empty({groups, out}, at::kFloat);
  float* p = scales.data_ptr<float>();
  for (size_t k = 0; k < grids.size(); ++k) p[k] = grids[k].scale;
  if (!at::isfinite(scales).all().item<bool>())
    qforge::invalid_argument("GPTQ: a group's scale exceeds float16's range (weights too large)");
  return scales.to(at::kHalf);  // exact: the scales are float16 values already
}

}  // namespace

Settings gptq_v1_settings(const Params& params, int64_t in_f) {
  Settings s;
  s.grid.bits = grid::bits(params);
  s.grid.sym = params.get_bool("sym");
  // What gptq/1 stores, applied before the grid is used so that GPTQ
  // compensates for it: float16 scales, and zero − 1, which can't hold an
  // asymmetric zero of 0 (a group whose weights are all ≥ 0: it loses its top
  // grid point instead of wrapping around).
  s.grid.half_scales = true;
  s.grid.zero_min = QFORGE_GPTQ_V1_ZERO_OFFSET;
  s.group_size = grid::group_size(params, in_f);
  s.percdamp = params.get_float("percdamp");
  if (!(s.percdamp >= 0 && s.percdamp <= 1))
    invalid_argument("percdamp must be in [0, 1], got " + std::to_string(s.percdamp));
  const int64_t block_size = params.get_int("block_size");
  if (block_size < 1) invalid_argument("block_size must be >= 1");
  s.block_size = std::min(block_size, in_f);
  return s;
}

std::string sparsity_structure(const Settings& s) {
  if (s.prune_m > 0 && s.prune_n > 0)
    return std::to_string(s.prune_n) + ":" + std::to_string(s.prune_m);
  return s.prune_m == 0 && s.sparsity > 0 ? QFORGE_SPARSITY_UNSTRUCTURED : "";
}

void write_gptq_v1(const QuantizeOutput& out, const Settings& s, const Result& r,
                   const LayerInput& in) {
  const int64_t out_f = in.out_features(), in_f = in.in_features();
  const at::Tensor scales = pack_scales(r.grids, r.groups, out_f);
  if (!at::isfinite(r.Q).all().item<bool>())
    invalid_argument("GPTQ produced non-finite weights (is the Hessian badly scaled?)");
  at::Tensor g_idx = at::empty({in_f}, at::kInt);
  std::copy(r.g_idx.begin(), r.g_idx.end(), g_idx.data_ptr<int32_t>());

  nlohmann::json meta = {
      {QFORGE_GPTQ_V1_BITS, s.grid.bits},
      {QFORGE_GPTQ_V1_GROUP_SIZE, s.group_size},
      {QFORGE_GPTQ_V1_SYM, s.grid.sym},
      {QFORGE_GPTQ_V1_DESC_ACT, s.desc_act},
      {QFORGE_GPTQ_V1_STATIC_GROUPS, s.static_groups},
      {QFORGE_GPTQ_V1_IN_FEATURES, in_f},
      {QFORGE_GPTQ_V1_OUT_FEATURES, out_f},
      {QFORGE_GPTQ_V1_CHECKPOINT_FORMAT, QFORGE_GPTQ_V1_CHECKPOINT_FORMAT_V1},
      {QFORGE_GPTQ_V1_ZERO_POINT_MIN, QFORGE_GPTQ_V1_ZERO_OFFSET},
      {QFORGE_GPTQ_V1_DAMP_PERCENT, r.percdamp_used},
      {QFORGE_GPTQ_V1_MSE, s.grid.mse}};
  if (const std::string structure = sparsity_structure(s); !structure.empty())
    meta[QFORGE_META_SPARSITY_STRUCTURE] = structure;
  out.set_format(QFORGE_FORMAT_GPTQ_V1, meta.dump());
  out.add_tensor(QFORGE_GPTQ_V1_QWEIGHT,
                 export_tensor(pack_qweight(r.codes, s.grid.bits)));
  out.add_tensor(QFORGE_GPTQ_V1_QZEROS,
                 export_tensor(pack_qzeros(r.grids, r.groups, out_f, s.grid.bits)));
  out.add_tensor(QFORGE_GPTQ_V1_SCALES, export_tensor(scales));
  out.add_tensor(QFORGE_GPTQ_V1_G_IDX, export_tensor(g_idx));
  if (in.bias.defined()) out.add_tensor(QFORGE_GPTQ_V1_BIAS, export_tensor(in.bias));
  out.set_dequantized(export_tensor(r.Q));
  out.set_metric("hessian_error", r.hessian_error);
  out.set_metric("max_abs_error", (r.Q - in.weight).abs().max().item<double>());
  out.set_metric("percdamp_used", r.percdamp_used);
  out.set_metric("dead_inputs", static_cast<double>(r.dead_inputs));
}

}  // namespace qforge::gptq
