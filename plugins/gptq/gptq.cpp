// qforge-gptq: GPTQ weight quantization and the inference layer that runs its
// packed format.
//
//   E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh. "GPTQ: Accurate
//   Post-Training Quantization for Generative Pre-trained Transformers",
//   ICLR 2023, arXiv:2210.17323. Algorithm 1; the reference implementation is
//   IST-DASLab/gptq (gptq.py, quant.py).
//
// Components
//   org.qforge.gptq         quantizer, writes "org.qforge.gptq/1"
//   org.qforge.gptq.layer   inference layer, consumes "org.qforge.gptq/1"
//
// The problem (paper, eq. 1): find Ŵ on the quantization grid minimising
// ‖WX − ŴX‖². Row by row this is the quadratic form (w − ŵ) H (w − ŵ)ᵀ with
// the Hessian H = 2/n XᵀX, which the host accumulates from the calibration
// activations. Every output row is independent; all rows share H.
//
// Algorithm 1, as implemented below (each step is one short function):
//   0. dead inputs: H_ii = 0 means input i was always zero; set H_ii = 1 and
//      W[:, i] = 0 (the reference's `dead` handling).
//   1. act-order (desc_act): process the columns by decreasing diag(H).
//   2. dampening: H += λI, λ = percdamp · mean(diag H).
//   3. the Cholesky form (paper §"Step 3"): U = Cholesky(H⁻¹)ᵀ, the upper
//      factor with H⁻¹ = UᵀU; row i of U holds, up to the factor U_ii, the
//      row of the inverse Hessian of the not-yet-quantized columns i.. that
//      the OBQ update (eq. 2/3) needs, so H⁻¹ never has to be updated.
//      U is computed without forming H⁻¹, as J M⁻¹ J from the Cholesky
//      factor M of H with its index order reversed (J): the same matrix in
//      half the reference's flops (see upper_cholesky_of_inverse).
//   4. for each block of `block_size` columns [i1, i2) (lazy batch updates,
//      eq. 4), for each column i of the block:
//         q   = quant(w_i)                 on the current group's grid
//         err = (w_i − q) / U_ii
//         W[:, i+1:i2] −= err · U[i, i+1:i2]   (the OBQ update inside the block)
//      then, once per block:
//         W[:, i2:] −= Err · U[i1:i2, i2:]      (the lazy batch update)
//      The loss of column i is (w_i − q)² / U_ii² / 2 ("Losses" of the
//      reference); their sum is reported as the metric "hessian_error".
//   5. undo the act-order permutation.
//
// Every output row is independent, so the inner loop of step 4 runs row by
// row (the row's block of 128 floats stays in L1 and the rows are spread over
// threads); the batch update is one GEMM per block.
//
// The grid (quant.py's Quantizer, the same convention as plugins/rtn): per
// output row and group,
//   xmin = min(0, min w)   xmax = max(0, max w)
//   sym:  xmax = max(|xmin|, xmax); xmin = −xmax when xmin < 0
//   xmin == xmax == 0:  xmin = −1, xmax = 1
//   scale = (xmax − xmin) / maxq,  maxq = 2^bits − 1
//   zero  = sym ? (maxq + 1) / 2 : round(−xmin / scale)
//   q     = clamp(round(w / scale) + zero, 0, maxq),  ŵ = scale · (q − zero)
// with two changes that the packed format forces, applied *before* the grid
// is used so that GPTQ compensates for them:
//   - scale is rounded to float16 (the format stores float16 scales), so the
//     quantizer's dequantized weight equals the inference layer's bit for bit;
//     a scale below float16's smallest subnormal is raised to it;
//   - the AutoGPTQ v1 format stores zero − 1, which can't hold an asymmetric
//     zero of 0 (a group whose weights are all ≥ 0), so asymmetric zeros are
//     clamped to [1, maxq] instead of wrapping around ("zero_point_min": 1 in
//     the metadata). Such a group loses its top grid point.
// mse = true adds the reference's grid search (Quantizer(mse=True)): shrink
// [xmin, xmax] by p = 1 − k/100, k = 0..79, and keep the grid minimising
// Σ|ŵ − w|^2.4 over the group.
//
// Groups: with group_size G, the grid of a group is computed when its first
// column is reached (i % G == 0 in processing order) from the error-updated
// weights of its G columns — unless static_groups, where every group's grid
// is computed up front from the unpermuted W (the reference's static_groups).
// "Updated" exactly as in the reference (and AutoGPTQ): the weights as they
// were when the current block of columns began, i.e. with the updates of all
// earlier blocks but not those of the earlier columns of the same block (the
// reference reads them from its outer W, which the in-block updates don't
// touch). So for G < block_size the block size slightly changes the result;
// block_size = G (or 1) gives grids from fully updated weights. The
// reference's choice is kept because it is what published GPTQ numbers and
// AutoGPTQ checkpoints use, and because it measured slightly better: on the
// stories260K Hessians of the tests (G = 16/32, block 64 vs block = G) its
// Hessian-weighted error was lower in most layers, by 1-3 % on average at
// 2 bits, under 1 % at 3 bits, mixed at 4 bits. Per-channel grids are
// computed from W after the dead columns are zeroed (the reference computes
// them before).
//
// Packed format "org.qforge.gptq/1" (the AutoGPTQ v1 checkpoint layout):
//   metadata  {"bits":B, "group_size":G, "sym":bool, "desc_act":bool,
//              "static_groups":bool, "in_features":I, "out_features":O,
//              "checkpoint_format":"gptq", "zero_point_min":1, ...};
//              G is the effective group size (I for per-channel);
//              groups = ceil(I / G).
//   qweight   int32   [ceil(I·B/32), O]  column o holds the I codes of output
//                                        o, ORIGINAL input order, as one
//                                        LSB-first bit stream (3-bit codes
//                                        straddle words; the last word of a
//                                        column is zero-padded)
//   qzeros    int32   [groups, ceil(O·B/32)]  zero − 1 of every output, one
//                                        bit stream per group
//   scales    float16 [groups, O]
//   g_idx     int32   [I]                the group of each input column
//   bias      float32 [O]                only when the layer has a bias (the
//                                        layer also takes float16 / bfloat16,
//                                        as Hugging Face GPTQ checkpoints store it)
//   W[o, i] = scales[g, o] · (q[i, o] − (qzeros[g, o] + 1)),  g = g_idx[i]
// With desc_act, groups follow the processing order: g_idx[perm[i]] = i / G;
// with static groups (or without desc_act) g_idx[j] = j / G.
//
// The inference layer repacks the tensors once into a kernels/ PackedMatrix
// (B bits per weight, the inputs reordered so that each group's columns are
// contiguous, whatever g_idx is; float16 scales and uint8 zero points when
// they fit) and runs it through qforge_kernels/torch_layer.hpp, shared with
// the RTN layer: up to kGemvMaxRows rows of x the packed SIMD kernels
// (AVX-512 / AVX2 / portable, picked at run time) compute y directly from the
// codes; larger batches and backward_input dequantize W block by block into
// one reused 4 MiB buffer and multiply with a LibTorch GEMM. dequantize gives
// W bit for bit as the quantizer's dequantized weight.
#include <qforge/cpp/plugin.hpp>
#include <qforge/cpp/torch.hpp>
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/packed_matrix.hpp>
#include <qforge_kernels/torch_layer.hpp>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

// The column loop is compiled for AVX-512, AVX2 and the baseline, picked at
// load time; with -ffp-contract=off (CMakeLists.txt) all give identical bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define QFORGE_GPTQ_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define QFORGE_GPTQ_CLONES
#endif

namespace {

constexpr const char* kFormat = "org.qforge.gptq/1";
constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

using qforge::kernels::aten::invalid;
using qforge::kernels::aten::require_float_cpu;
using qforge::kernels::aten::shape_str;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows per at::parallel_for task: about 64K elements.
int64_t row_grain(int64_t row_length) { return std::max<int64_t>(1, 65536 / row_length); }

// ---------------------------------------------------------------------------
// The quantization grid (quant.py)
// ---------------------------------------------------------------------------

struct Settings {
  int bits = 4;
  float maxq = 15;           // 2^bits − 1
  int64_t group_size = 128;  // effective: in_features for per-channel
  bool sym = true, desc_act = false, static_groups = false, mse = false;
  double percdamp = 0.01;
  int64_t block_size = 128;
};

// The grid of one output row within one group.
struct Grid {
  float scale;  // float16-representable, > 0 (infinite when out of float16's range)
  float zero;   // an integer in [0, maxq]; >= 1 when asymmetric
};

// quant.py's quantize(), split in two: the integer code of w, and its value.
inline float code_of(float w, const Grid& g, float maxq) {
  return std::min(std::max(std::nearbyint(w / g.scale) + g.zero, 0.f), maxq);
}
inline float value_of(float q, const Grid& g) { return g.scale * (q - g.zero); }

float round_to_half(float x) { return static_cast<float>(c10::Half(x)); }

// The grid spanning [xmin, xmax] (xmin <= 0 <= xmax, not both 0).
Grid grid_for(float xmin, float xmax, const Settings& s) {
  const float scale = (xmax - xmin) / s.maxq;
  float zero = s.sym ? (s.maxq + 1) / 2 : std::nearbyint(-xmin / scale);
  if (!s.sym) zero = std::min(std::max(zero, 1.f), s.maxq);  // v1 stores zero − 1 >= 0
  constexpr float kMinHalf = 5.9604645e-08f;                  // 2^-24, float16's smallest
  return Grid{std::max(round_to_half(scale), kMinHalf), zero};
}

// Σ |ŵ − w|^norm over one group, for the mse search.
double grid_error(const float* x, int64_t n, const Grid& g, float maxq) {
  constexpr float kNorm = 2.4f;
  double sum = 0;
  for (int64_t j = 0; j < n; ++j)
    sum += std::pow(std::fabs(value_of(code_of(x[j], g, maxq), g) - x[j]), kNorm);
  return sum;
}

// Quantizer.find_params() for one row of one group: x[0..n).
Grid find_params(const float* x, int64_t n, const Settings& s) {
  float xmin = 0.f, xmax = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    xmin = std::min(xmin, x[j]);
    xmax = std::max(xmax, x[j]);
  }
  if (s.sym) {
    xmax = std::max(-xmin, xmax);
    if (xmin < 0.f) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) {
    xmin = -1.f;
    xmax = 1.f;
  }
  Grid best = grid_for(xmin, xmax, s);
  if (!s.mse) return best;
  // The reference's grid search: grid = 100, maxshrink = 0.8, norm = 2.4.
  constexpr int kGrid = 100, kSteps = 80;  // int(maxshrink · grid)
  double best_error = std::numeric_limits<double>::infinity();
  for (int k = 0; k < kSteps; ++k) {
    const float p = static_cast<float>(1.0 - static_cast<double>(k) / kGrid);
    const Grid g = grid_for(p * xmin, p * xmax, s);
    const double e = grid_error(x, n, g, s.maxq);
    if (e < best_error) {
      best_error = e;
      best = g;
    }
  }
  return best;
}

// ---------------------------------------------------------------------------
// Quantizer: Algorithm 1
// ---------------------------------------------------------------------------

class Gptq {
 public:
  Gptq(const qforge::Host& host, const Settings& s, at::Tensor W, at::Tensor H)
      : host_(host), s_(s), W_(std::move(W)), H_(std::move(H)),
        out_(W_.size(0)), in_(W_.size(1)), groups_(ceil_div(in_, s.group_size)) {}

  // Runs steps 0-5. Afterwards: dequantized(), codes(), grids(), g_idx().
  void run() {
    remove_dead_inputs();
    if (s_.static_groups) find_static_grids();
    if (s_.desc_act) permute_by_decreasing_diagonal();
    inverse_hessian_cholesky();
    quantize_columns();
    unpermute();
  }

  const at::Tensor& dequantized() const { return W_; }  // [out, in], original order
  const at::Tensor& codes() const { return codes_; }    // uint8 [out, in], original order
  const std::vector<Grid>& grids() const { return grids_; }  // [groups][out]
  const std::vector<int32_t>& g_idx() const { return g_idx_; }
  int64_t groups() const { return groups_; }
  double hessian_error() const { return hessian_error_; }
  double percdamp_used() const { return percdamp_used_; }
  int64_t dead_inputs() const { return dead_; }

 private:
  // Step 0: an input that was always zero has H_ii = 0; its weights can't
  // matter, so they are set to zero and H_ii to 1 (keeps H invertible).
  void remove_dead_inputs() {
    const at::Tensor dead = H_.diagonal().eq(0);
    dead_ = dead.sum().item<int64_t>();
    if (dead_ == 0) return;
    H_.diagonal().masked_fill_(dead, 1.f);
    W_.masked_fill_(dead.unsqueeze(0), 0.f);
  }

  // static_groups: every group's grid from the unpermuted W, before any update.
  void find_static_grids() {
    grids_.resize(static_cast<size_t>(groups_ * out_));
    const float* w = W_.data_ptr<float>();
    at::parallel_for(0, out_, row_grain(in_), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < groups_; ++g) {
          const int64_t j = g * s_.group_size;
          grids_[g * out_ + r] = find_params(w + r * in_ + j, group_width(j), s_);
        }
    });
  }

  // Step 1 (act-order): columns in order of decreasing H_ii, the inputs with
  // the largest activations first (ties: lower index first).
  void permute_by_decreasing_diagonal() {
    const at::Tensor perm =
        std::get<1>(at::sort(H_.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    W_ = W_.index_select(1, perm);
    H_ = H_.index_select(0, perm).index_select(1, perm);
    perm_.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + in_);
  }

  // Steps 2 and 3: H += λI, then U, the upper Cholesky factor of H⁻¹
  // (H⁻¹ = UᵀU, paper §3 "Step 3"). When H + λI is not numerically positive
  // definite, λ is raised tenfold (at most five times) with a warning, as
  // GPTQ ports commonly do.
  void inverse_hessian_cholesky() {
    const double mean_diag = H_.diagonal().mean().item<double>();
    double percdamp = s_.percdamp;
    for (int attempt = 0; attempt <= 5; ++attempt) {
      if (attempt > 0) {
        percdamp = percdamp > 0 ? percdamp * 10 : 0.01;
        host_.log(QFORGE_LOG_WARN, "gptq: the dampened Hessian is not positive definite; "
                                   "retrying with percdamp = " + std::to_string(percdamp));
      }
      at::Tensor Hd = H_.clone();
      Hd.diagonal().add_(percdamp * mean_diag);
      U_ = upper_cholesky_of_inverse(Hd);
      if (!U_.defined()) continue;
      percdamp_used_ = percdamp;
      H_ = at::Tensor();  // no longer needed
      return;
    }
    invalid("GPTQ: the Hessian is not positive definite, even dampened with percdamp = " +
            std::to_string(percdamp) + " (is it a Hessian 2/n XᵀX of this layer's inputs?)");
  }

  // U with H⁻¹ = UᵀU, U upper triangular, without forming H⁻¹ (the reference
  // computes Cholesky(H), its inverse, then Cholesky of that: twice the
  // work). With J the exchange matrix (J reverses the index order):
  //   JHJ = M Mᵀ (Cholesky, M lower)  ⇒  H = (JMJ)(JMJ)ᵀ, JMJ upper
  //   ⇒  H⁻¹ = (JMJ)⁻ᵀ (JMJ)⁻¹ = UᵀU  with  U = (JMJ)⁻¹ = J M⁻¹ J,
  // upper triangular with a positive diagonal, hence the Cholesky factor
  // (it is unique). One Cholesky and one triangular inverse; in float32 it is
  // closer to a float64 computation than the reference's route. Undefined
  // when H is not numerically positive definite.
  static at::Tensor upper_cholesky_of_inverse(const at::Tensor& H) {
    at::Tensor M, info;
    std::tie(M, info) = at::linalg_cholesky_ex(H.flip({0, 1}), /*upper=*/false,
                                               /*check_errors=*/false);
    if (info.item<int>() != 0) return at::Tensor();
    at::Tensor Minv = at::empty_like(M, at::MemoryFormat::Contiguous);
    invert_lower_triangular(M, Minv);
    at::Tensor U = Minv.flip({0, 1}).contiguous();
    if (!at::isfinite(U).all().item<bool>()) return at::Tensor();
    return U;
  }

  // inv = M⁻¹ for a lower-triangular M, by blocks:
  //   [A 0; B C]⁻¹ = [A⁻¹ 0; −C⁻¹ B A⁻¹ C⁻¹],
  // the off-diagonal block by two triangular solves (n³/3 flops in all).
  static void invert_lower_triangular(const at::Tensor& M, at::Tensor inv) {
    const int64_t n = M.size(0);
    if (n <= 256) {
      inv.copy_(at::linalg_solve_triangular(M, at::eye(n, M.options()), /*upper=*/false));
      return;
    }
    const int64_t h = n / 2;
    const at::Tensor A = M.narrow(0, 0, h).narrow(1, 0, h);
    const at::Tensor B = M.narrow(0, h, n - h).narrow(1, 0, h);
    const at::Tensor C = M.narrow(0, h, n - h).narrow(1, h, n - h);
    invert_lower_triangular(A, inv.narrow(0, 0, h).narrow(1, 0, h));
    invert_lower_triangular(C, inv.narrow(0, h, n - h).narrow(1, h, n - h));
    const at::Tensor CinvB = at::linalg_solve_triangular(C, B, /*upper=*/false, /*left=*/true);
    const at::Tensor X = at::linalg_solve_triangular(A, CinvB, /*upper=*/false, /*left=*/false);
    inv.narrow(0, h, n - h).narrow(1, 0, h).copy_(X).neg_();
    inv.narrow(0, 0, h).narrow(1, h, n - h).zero_();
  }

  // Step 4: the column loop in blocks with lazy batch updates.
  void quantize_columns() {
    if (!s_.static_groups) grids_.resize(static_cast<size_t>(groups_ * out_));
    codes_ = at::empty({out_, in_}, at::kByte);
    const at::Tensor Err = at::empty({out_, s_.block_size}, at::kFloat);
    std::vector<double> row_loss(static_cast<size_t>(out_), 0.0);
    for (int64_t i1 = 0, i2 = 0; i1 < in_; i1 = i2) {
      host_.check_cancelled();
      i2 = std::min(i1 + s_.block_size, in_);
      at::parallel_for(0, out_, std::max<int64_t>(1, 4096 / (i2 - i1)),
                       [&](int64_t r0, int64_t r1) {
                         std::vector<float> scratch(
                             static_cast<size_t>(s_.block_size + std::min(s_.group_size, in_)));
                         for (int64_t r = r0; r < r1; ++r)
                           row_loss[r] += quantize_block_row(r, i1, i2, Err, scratch.data());
                       });
      if (i2 < in_) lazy_batch_update(i1, i2, Err);
      host_.progress("gptq columns", static_cast<uint64_t>(i2), static_cast<uint64_t>(in_));
    }
    hessian_error_ = 0;
    for (double l : row_loss) hessian_error_ += l;
  }

  int64_t group_width(int64_t first_column) const {
    return std::min(s_.group_size, in_ - first_column);
  }

  // The group of processing column i.
  int64_t group_of(int64_t i) const {
    if (s_.static_groups && !perm_.empty()) return perm_[i] / s_.group_size;
    return i / s_.group_size;
  }

  // Row r of Algorithm 1's inner loop over the block [i1, i2): quantize each
  // column, spread its error over the block's later columns (the OBQ update,
  // eq. 2, with U's row as the inverse-Hessian column), record the scaled
  // error for the batch update. The quantized value replaces w_i in place.
  // `scratch` holds block_size + min(group_size, in) floats. Returns the row's loss
  // Σ (w − q)² / U_ii² / 2.
  QFORGE_GPTQ_CLONES double quantize_block_row(int64_t r, int64_t i1, int64_t i2,
                                               const at::Tensor& Err, float* scratch) {
    float* w = W_.data_ptr<float>() + r * in_;
    float* err = Err.data_ptr<float>() + r * Err.size(1);
    uint8_t* code = codes_.data_ptr<uint8_t>() + r * in_;
    const float* U = U_.data_ptr<float>();
    // The block's weights as they were at its start, for the grids of the
    // groups that start inside it (if any).
    float* block_start = scratch;
    float* group = scratch + s_.block_size;
    if (!s_.static_groups && (i1 / s_.group_size + 1) * s_.group_size < i2)
      std::copy(w + i1, w + i2, block_start);
    double loss = 0;
    for (int64_t i = i1; i < i2; ++i) {
      const int64_t g = group_of(i);
      if (!s_.static_groups && i % s_.group_size == 0)
        grids_[g * out_ + r] = find_params(group_at_block_start(w, i, i1, i2, block_start, group),
                                           group_width(i), s_);
      const Grid& grid = grids_[g * out_ + r];
      const float q = code_of(w[i], grid, s_.maxq);
      const float wq = value_of(q, grid);
      const float* u = U + i * in_;  // row i of U: U_ii, then H⁻¹'s direction
      const float e = (w[i] - wq) / u[i];
      loss += 0.5 * static_cast<double>(e) * e;
      err[i - i1] = e;
      for (int64_t j = i + 1; j < i2; ++j) w[j] -= e * u[j];
      w[i] = wq;
      code[i] = static_cast<uint8_t>(q);
    }
    return loss;
  }

  // The weights of the group starting at column i, as they were when the
  // block [i1, i2) began (the reference's W[:, i:i+G]): its columns inside
  // the block from `block_start`, those after it from w (the batch update
  // has not reached them yet). Points into w when the group starts the block.
  const float* group_at_block_start(const float* w, int64_t i, int64_t i1, int64_t i2,
                                    const float* block_start, float* group) const {
    if (i == i1) return w + i;
    const int64_t end = i + group_width(i), inside = std::min(end, i2);
    std::copy(block_start + (i - i1), block_start + (inside - i1), group);
    std::copy(w + inside, w + end, group + (inside - i));
    return group;
  }

  // The lazy batch update (eq. 4): W[:, i2:] −= Err · U[i1:i2, i2:].
  void lazy_batch_update(int64_t i1, int64_t i2, const at::Tensor& Err) {
    const int64_t count = i2 - i1, rest = in_ - i2;
    at::Tensor tail = W_.narrow(1, i2, rest);
    tail.addmm_(Err.narrow(1, 0, count), U_.narrow(0, i1, count).narrow(1, i2, rest),
                /*beta=*/1, /*alpha=*/-1);
  }

  // Step 5: columns back in their original order; g_idx of every column.
  void unpermute() {
    g_idx_.resize(static_cast<size_t>(in_));
    if (perm_.empty()) {
      for (int64_t j = 0; j < in_; ++j) g_idx_[j] = static_cast<int32_t>(j / s_.group_size);
      return;
    }
    std::vector<int64_t> invperm(perm_.size());
    for (int64_t i = 0; i < in_; ++i) {
      g_idx_[perm_[i]] = static_cast<int32_t>(group_of(i));
      invperm[perm_[i]] = i;
    }
    const at::Tensor inv = at::tensor(invperm, at::kLong);
    W_ = W_.index_select(1, inv);
    codes_ = codes_.index_select(1, inv);
  }

  const qforge::Host& host_;
  Settings s_;
  at::Tensor W_, H_, U_, codes_;
  std::vector<int64_t> perm_;  // processing column i is original column perm_[i] (act-order)
  int64_t out_, in_, groups_;
  std::vector<Grid> grids_;
  std::vector<int32_t> g_idx_;
  double hessian_error_ = 0, percdamp_used_ = 0;
  int64_t dead_ = 0;
};

// qweight [words(in), out]: column o is output o's codes along the input
// (packed as rows of [out, words], then transposed).
at::Tensor pack_qweight(const at::Tensor& codes, int bits) {
  const int64_t out = codes.size(0), in = codes.size(1);
  const int64_t words = qforge::kernels::words_for(in, bits);
  at::Tensor rows = at::empty({out, words}, at::kInt);
  const uint8_t* src = codes.data_ptr<uint8_t>();
  auto* dst = reinterpret_cast<uint32_t*>(rows.data_ptr<int32_t>());
  at::parallel_for(0, out, row_grain(in), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      qforge::kernels::pack_bits(src + o * in, in, bits, dst + o * words);
  });
  return rows.t().contiguous();
}

// qzeros [groups, words(out)]: row g is zero − 1 of every output.
at::Tensor pack_qzeros(const std::vector<Grid>& grids, int64_t groups, int64_t out, int bits) {
  const int64_t words = qforge::kernels::words_for(out, bits);
  at::Tensor qzeros = at::empty({groups, words}, at::kInt);
  auto* dst = reinterpret_cast<uint32_t*>(qzeros.data_ptr<int32_t>());
  std::vector<uint8_t> z(static_cast<size_t>(out));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t o = 0; o < out; ++o) z[o] = static_cast<uint8_t>(grids[g * out + o].zero - 1);
    qforge::kernels::pack_bits(z.data(), out, bits, dst + g * words);
  }
  return qzeros;
}

// scales float16 [groups, out]
at::Tensor scales_tensor(const std::vector<Grid>& grids, int64_t groups, int64_t out) {
  at::Tensor scales = at::empty({groups, out}, at::kFloat);
  float* p = scales.data_ptr<float>();
  for (size_t k = 0; k < grids.size(); ++k) p[k] = grids[k].scale;
  if (!at::isfinite(scales).all().item<bool>())
    invalid("GPTQ: a group's scale exceeds float16's range (weights too large)");
  return scales.to(at::kHalf);  // exact: the scales are float16 values already
}

struct GptqQuantizer {
  static const char* const* formats() {
    static const char* const list[] = {kFormat, nullptr};
    return list;
  }

  static Settings settings(const qforge::Params& params, int64_t in_f) {
    Settings s;
    const int64_t bits = params.get_int("bits");
    if (bits < qforge::kernels::kMinPackBits || bits > qforge::kernels::kMaxPackBits)
      invalid("bits must be in [2, 8], got " + std::to_string(bits));
    s.bits = static_cast<int>(bits);
    s.maxq = static_cast<float>((1 << bits) - 1);
    const int64_t group_size = params.get_int("group_size");
    if (group_size == 0 || group_size < -1)
      invalid("group_size must be -1 (one group per output channel) or a positive number of "
              "input columns, got " + std::to_string(group_size));
    s.group_size = group_size == -1 ? in_f : group_size;
    s.sym = params.get_bool("sym");
    s.desc_act = params.get_bool("desc_act");
    s.static_groups = params.get_bool("static_groups");
    s.percdamp = params.get_float("percdamp");
    if (!(s.percdamp >= 0 && s.percdamp <= 1))
      invalid("percdamp must be in [0, 1], got " + std::to_string(s.percdamp));
    s.block_size = params.get_int("block_size");
    if (s.block_size < 1) invalid("block_size must be >= 1");
    s.block_size = std::min(s.block_size, in_f);
    s.mse = params.get_bool("mse");
    return s;
  }

  static void quantize(const qforge::Host& host, const qforge_quantize_input& input,
                       const qforge::Params& params, const qforge::QuantizeOutput& out) {
    host.check_cancelled();
    if (input.weight == nullptr) invalid("no weight given");
    const at::Tensor w = qforge::borrow(*input.weight);
    require_float_cpu(w, "weight");
    if (w.dim() != 2 || w.size(0) < 1 || w.size(1) < 1 || w.size(0) > kMaxDim ||
        w.size(1) > kMaxDim)
      invalid("weight must be a non-empty 2-D [out, in] tensor, got " + shape_str(w.sizes()));
    const int64_t out_f = w.size(0), in_f = w.size(1);
    const Settings s = settings(params, in_f);

    if (input.hessian == nullptr)
      invalid("GPTQ needs calibration (a Hessian): run it through the pipeline with "
              "calibration data");
    const at::Tensor h = qforge::borrow(*input.hessian);
    require_float_cpu(h, "hessian");
    if (h.dim() != 2 || h.size(0) != in_f || h.size(1) != in_f)
      invalid("hessian must be [" + std::to_string(in_f) + ", " + std::to_string(in_f) +
              "] for a weight " + shape_str(w.sizes()) + ", got " + shape_str(h.sizes()));
    if (!at::isfinite(w).all().item<bool>()) invalid("weight contains NaN or infinite values");
    if (!at::isfinite(h).all().item<bool>()) invalid("hessian contains NaN or infinite values");

    at::Tensor bias;
    if (input.bias != nullptr) {
      bias = qforge::borrow(*input.bias);
      require_float_cpu(bias, "bias");
      if (bias.dim() != 1 || bias.size(0) != out_f)
        invalid("bias must be [" + std::to_string(out_f) + "], got " + shape_str(bias.sizes()));
      bias = bias.clone(at::MemoryFormat::Contiguous);  // the input is only borrowed
    }

    // Working copies: the inputs are only borrowed.
    Gptq gptq(host, s, w.clone(at::MemoryFormat::Contiguous),
              h.clone(at::MemoryFormat::Contiguous));
    gptq.run();
    const at::Tensor& dequant = gptq.dequantized();
    const at::Tensor scales = scales_tensor(gptq.grids(), gptq.groups(), out_f);
    if (!at::isfinite(dequant).all().item<bool>())
      invalid("GPTQ produced non-finite weights (is the Hessian badly scaled?)");

    at::Tensor g_idx = at::empty({in_f}, at::kInt);
    std::copy(gptq.g_idx().begin(), gptq.g_idx().end(), g_idx.data_ptr<int32_t>());

    nlohmann::json meta = {{"bits", s.bits},
                           {"group_size", s.group_size},
                           {"sym", s.sym},
                           {"desc_act", s.desc_act},
                           {"static_groups", s.static_groups},
                           {"in_features", in_f},
                           {"out_features", out_f},
                           {"checkpoint_format", "gptq"},
                           {"zero_point_min", 1},
                           {"damp_percent", gptq.percdamp_used()},
                           {"mse", s.mse}};
    out.set_format(kFormat, meta.dump());
    out.add_tensor("qweight", qforge::export_tensor(pack_qweight(gptq.codes(), s.bits)));
    out.add_tensor("qzeros", qforge::export_tensor(
                                 pack_qzeros(gptq.grids(), gptq.groups(), out_f, s.bits)));
    out.add_tensor("scales", qforge::export_tensor(scales));
    out.add_tensor("g_idx", qforge::export_tensor(g_idx));
    if (bias.defined()) out.add_tensor("bias", qforge::export_tensor(bias));
    out.set_dequantized(qforge::export_tensor(dequant));
    out.set_metric("hessian_error", gptq.hessian_error());
    out.set_metric("max_abs_error", (dequant - w).abs().max().item<double>());
    out.set_metric("percdamp_used", gptq.percdamp_used());
    out.set_metric("dead_inputs", static_cast<double>(gptq.dead_inputs()));
  }
};

// ---------------------------------------------------------------------------
// Inference layer
// ---------------------------------------------------------------------------

int64_t meta_int(const nlohmann::json& m, const char* key, int64_t lo, int64_t hi) {
  return qforge::kernels::aten::meta_int(m, kFormat, key, lo, hi);
}

class GptqLayer : public qforge::kernels::aten::MatrixLayer {
 public:
  static const char* const* formats() {
    static const char* const list[] = {kFormat, nullptr};
    return list;
  }

  GptqLayer(const qforge::Host&, const std::string& format, const std::string& metadata,
            const std::vector<const qforge_named_tensor*>& tensors) {
    if (format != kFormat)
      throw qforge::Error(QFORGE_STATUS_UNSUPPORTED,
                          "org.qforge.gptq.layer does not consume format '" + format + "'");
    read_metadata(metadata);

    const qforge::kernels::aten::PackedTensors packed(kFormat, tensors,
                                                      {"qweight", "qzeros", "scales", "g_idx", "bias"});
    const int64_t zero_words = qforge::kernels::words_for(out_, bits_);
    const at::Tensor qweight =
        packed.take("qweight", {DLDataType{kDLInt, 32, 1}}, {words_, out_}, true);
    const at::Tensor qzeros =
        packed.take("qzeros", {DLDataType{kDLInt, 32, 1}}, {groups_, zero_words}, true);
    const at::Tensor scales =
        packed.take("scales", {DLDataType{kDLFloat, 16, 1}}, {groups_, out_}, true);
    const at::Tensor g_idx =
        packed.take("g_idx", {DLDataType{kDLInt, 32, 1}}, {in_}, true);
    const at::Tensor bias = packed.take("bias",
                                 {DLDataType{kDLFloat, 32, 1}, DLDataType{kDLFloat, 16, 1},
                                  DLDataType{kDLBfloat, 16, 1}},
                                 {out_}, false);

    if (g_idx.lt(0).any().item<bool>() || g_idx.ge(groups_).any().item<bool>())
      invalid(std::string(kFormat) + ": g_idx values must be in [0, " +
              std::to_string(groups_) + ")");
    const at::Tensor scales_f = scales.to(at::kFloat);  // exact
    if (!at::isfinite(scales_f).all().item<bool>())
      invalid(std::string(kFormat) + ": scales must be finite");
    const at::Tensor zeros = unpack_zeros(qzeros);  // float32 [groups, out]
    // A copy in float32 (the inputs are only borrowed; the rest is repacked).
    if (bias.defined()) bias_ = bias.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);

    // qweight [words, out]: output o's stream is column o; scales, zeros,
    // [groups, out]; the group of input i is g_idx[i].
    qforge::kernels::QuantizedWeight w;
    w.bits = bits_;
    w.in_features = in_;
    w.out_features = out_;
    w.codes = reinterpret_cast<const uint32_t*>(qweight.data_ptr<int32_t>());
    w.code_word_stride = out_;
    w.code_out_stride = 1;
    w.groups = groups_;
    w.g_idx = g_idx.data_ptr<int32_t>();
    w.scales = scales_f.data_ptr<float>();
    w.scale_group_stride = out_;
    w.scale_out_stride = 1;
    w.zeros = zeros.data_ptr<float>();
    w.zero_group_stride = out_;
    w.zero_out_stride = 1;
    try {
      matrix_ = qforge::kernels::aten::pack(w);
    } catch (const std::invalid_argument& e) {
      invalid(std::string(kFormat) + ": " + e.what());
    }
  }


 private:
  void read_metadata(const std::string& metadata) {
    nlohmann::json m;
    try {
      m = nlohmann::json::parse(metadata);
    } catch (const nlohmann::json::exception& e) {
      invalid(std::string(kFormat) + " metadata is not valid JSON: " + e.what());
    }
    if (!m.is_object()) invalid(std::string(kFormat) + " metadata must be a JSON object");
    bits_ = static_cast<int>(meta_int(m, "bits", 2, 8));
    group_size_ = meta_int(m, "group_size", 1, kMaxDim);
    in_ = meta_int(m, "in_features", 1, kMaxDim);
    out_ = meta_int(m, "out_features", 1, kMaxDim);
    for (const char* key : {"sym", "desc_act", "static_groups"}) {
      const auto it = m.find(key);
      if (it != m.end() && !it->is_boolean())
        invalid(std::string(kFormat) + " metadata \"" + key + "\" must be true or false");
    }
    const auto fmt = m.find("checkpoint_format");
    if (fmt != m.end() && (!fmt->is_string() || fmt->get<std::string>() != "gptq"))
      invalid(std::string(kFormat) + " metadata \"checkpoint_format\" must be \"gptq\" (v1)");
    groups_ = ceil_div(in_, group_size_);
    words_ = qforge::kernels::words_for(in_, bits_);
  }

  // qzeros [groups, words(out)] -> zero points (stored value + 1), float32 [groups, out].
  at::Tensor unpack_zeros(const at::Tensor& qzeros) const {
    at::Tensor zeros = at::empty({groups_, out_}, at::kFloat);
    const auto* words = reinterpret_cast<const uint32_t*>(qzeros.data_ptr<int32_t>());
    std::vector<uint8_t> z(static_cast<size_t>(out_));
    float* dst = zeros.data_ptr<float>();
    for (int64_t g = 0; g < groups_; ++g) {
      qforge::kernels::unpack_bits(words + g * qzeros.size(1), out_, bits_, z.data());
      for (int64_t o = 0; o < out_; ++o) dst[g * out_ + o] = static_cast<float>(z[o]) + 1.f;
    }
    return zeros;
  }


  int bits_ = 0;
  int64_t group_size_ = 0, groups_ = 0, words_ = 0;
};

// ---------------------------------------------------------------------------
// Plugin
// ---------------------------------------------------------------------------

const qforge::ComponentList& components() {
  static const qforge::ComponentList list = [] {
    static const char* const quantizer_features[] = {
        "weight-only", "needs-hessian", "per-group", "per-channel", "act-order", nullptr};
    static const char* const layer_features[] = {"cpu", "packed-kernels", nullptr};
    static const qforge_param_desc bits = qforge::param_range(
        QFORGE_PARAM_INT, "bits",
        "bits per weight code, 2..8 (2, 3, 4 and 8 are the tested widths)", "4", 2, 8);
    static const qforge_param_desc group_size = qforge::param_range(
        QFORGE_PARAM_INT, "group_size",
        "input columns sharing one scale/zero; -1 = one group per output channel "
        "(per-channel); 0 is invalid",
        "128", -1, 1048576);
    static const qforge_param_desc sym = qforge::param(
        QFORGE_PARAM_BOOL, "sym",
        "symmetric grid with a fixed zero point (true) or asymmetric min/max with a per-group "
        "zero point, kept >= 1 for the v1 format (false)",
        "true");
    static const qforge_param_desc desc_act = qforge::param(
        QFORGE_PARAM_BOOL, "desc_act",
        "act-order: quantize the input columns by decreasing Hessian diagonal", "false");
    static const qforge_param_desc static_groups = qforge::param(
        QFORGE_PARAM_BOOL, "static_groups",
        "compute every group's scale/zero from the original weights before the loop "
        "(g_idx stays sequential with desc_act)",
        "false");
    static const qforge_param_desc percdamp = qforge::param_range(
        QFORGE_PARAM_FLOAT, "percdamp",
        "dampening: add percdamp * mean(diag H) to the Hessian's diagonal", "0.01", 0, 1);
    static const qforge_param_desc block_size = qforge::param_range(
        QFORGE_PARAM_INT, "block_size",
        "columns per lazy batch update; as in the reference, grids of groups that start "
        "inside a block see the weights as of the block's start", "128", 1, 1048576);
    static const qforge_param_desc mse = qforge::param(
        QFORGE_PARAM_BOOL, "mse",
        "search shrunk grids for the least |error|^2.4 (grid 100, maxshrink 0.8), as the "
        "reference Quantizer's mse option",
        "false");
    static const qforge_param_desc* const params[] = {&bits,     &group_size, &sym,
                                                      &desc_act, &static_groups, &percdamp,
                                                      &block_size, &mse};
    qforge::ComponentList l;
    l.push_back(qforge::component(
        QFORGE_COMPONENT_QUANTIZER, "org.qforge.gptq", "GPTQ", "1.0.0", "qforge", "MIT",
        "GPTQ (Frantar et al., 2022, arXiv:2210.17323, Algorithm 1): quantizes the columns "
        "one at a time and compensates each one's error on the columns not yet quantized "
        "through the inverse Hessian of the layer's calibration inputs (Cholesky form, lazy "
        "batch updates). Optional act-order, static groups and the mse grid search. Writes "
        "AutoGPTQ v1 packed tensors.",
        quantizer_features, params, static_cast<uint32_t>(sizeof params / sizeof params[0]),
        qforge::quantizer_vtable<GptqQuantizer>()));
    l.push_back(qforge::component(
        QFORGE_COMPONENT_INFERENCE_LAYER, "org.qforge.gptq.layer", "GPTQ packed layer", "1.0.0",
        "qforge", "MIT",
        "Runs org.qforge.gptq/1 (AutoGPTQ v1 layout) layers on the CPU: keeps the bit-packed "
        "codes with per-group float16 scales, zero points and g_idx (act-order included); "
        "packed AVX-512/AVX2 kernels for small batches, dequantize + LibTorch GEMM for large "
        "ones.",
        layer_features, nullptr, 0, qforge::inference_layer_vtable<GptqLayer>()));
    return l;
  }();
  return list;
}

}  // namespace

QFORGE_DEFINE_PLUGIN("qforge-gptq", "1.0.0", components)
