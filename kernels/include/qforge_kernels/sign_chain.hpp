// Sign planes and chains of them: the kernels of the binary formats
// (DESIGN.md, "Packed formats are data"). A chain of L sign matrices
// S_l ∈ {±1}^{n_l × n_(l-1)} with scale vectors between them,
//
//   y = s_L ⊙ (S_L · ( … s_1 ⊙ (S_1 · (s_0 ⊙ x)))) (+ bias),
//
// is what a binary format decodes to: double binary factorization
// (org.qforge.dbf/1) is L = 2 (s_0, s_1, s_2 = its s0, s2, s4); a 1-bit sign
// matrix with row and column scales (OneBit) would be L = 1.
//
// A SignPlane keeps S as bits (1 = +1), 64 inputs per uint64 word, each row
// padded to whole words: what the kernel streams, 1 bit per weight. With x
// staged zero-padded to whole words and its sum T known, S·x = 2 P − T where P
// sums x over the +1 signs: one masked add per 16 weights (AVX-512: an
// add under a mask register; AVX2: a 256-entry table of lane masks;
// portable: the same masks from shifts). Every ISA computes the same float
// operations in the same order (sign_body.inc), so the results are identical
// bit for bit across ISAs and thread counts.
//
// The library does no threading: SignChain splits each plane's rows between
// the calls of a ParallelFor (packed_matrix.hpp) it is given.
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace qforge::kernels {

class SignPlane {
 public:
  static constexpr int64_t kWord = 64;  // inputs per word

  SignPlane() = default;
  // From rows as the formats store them: row o is ceil(cols / 8) bytes, MSB
  // first (bit 7 of byte 0 is S[o, 0]), 1 = +1. Throws std::invalid_argument
  // for sizes < 1.
  SignPlane(const uint8_t* msb_rows, int64_t rows, int64_t cols);

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t words() const { return words_; }
  // Bytes the kernel streams: rows × words × 8.
  size_t packed_bytes() const { return bits_.size() * sizeof(uint64_t); }

  // Sᵀ.
  SignPlane transposed() const;
  // dst[(o − o0) · ld + j] = S[o, j] as ±1.0f for the rows [o0, o1).
  void unpack(int64_t o0, int64_t o1, float* dst, int64_t ld) const;
  // The rows in the formats' layout (the constructor's input; the tail of
  // each row's last byte is 1).
  std::vector<uint8_t> msb_rows() const;

  // Inputs staged for gemm: [rows][ld] with ld = 64 words, zero past cols,
  // and the sum of each row.
  struct Staged {
    int64_t rows = 0, ld = 0;
    std::vector<float> x, sums;
  };
  // Stages x[r · ldx + j] (times scale[j] when scale is not null), r < rows.
  void stage(const float* x, int64_t rows, int64_t ldx, const float* scale, Staged& s) const;

  // y[r · ldy + o] = scale[o] · Σ_j S[o, j] x[r, j] (+ bias[o]) for every
  // staged row r and the outputs [o0, o1); scale and bias may be null.
  // Thread-safe for disjoint output ranges.
  void gemm(const Staged& x, int64_t o0, int64_t o1, float* y, int64_t ldy, const float* scale,
            const float* bias, Isa isa) const;

 private:
  int64_t rows_ = 0, cols_ = 0, words_ = 0;
  std::vector<uint64_t> bits_;  // [rows][words], bit b of word w = S[o, 64 w + b]
};

class SignChain {
 public:
  SignChain() = default;
  // planes[0] acts first; scales[l] (l = 0..L) has planes[0].cols() entries
  // for l = 0, else planes[l − 1].rows(); bias is empty or [out]. Throws
  // std::invalid_argument when the sizes do not chain.
  SignChain(std::vector<SignPlane> planes, std::vector<std::vector<float>> scales,
            std::vector<float> bias);
  SignChain(SignChain&&) = default;
  SignChain& operator=(SignChain&&) = default;

  int64_t in_features() const { return planes_.front().cols(); }
  int64_t out_features() const { return planes_.back().rows(); }
  size_t planes() const { return planes_.size(); }
  const SignPlane& plane(size_t l) const { return planes_[l]; }
  const std::vector<float>& scale(size_t l) const { return scales_[l]; }
  // Replaces scale vector l (its size kept): what tuning the format changes.
  void set_scale(size_t l, const float* values);
  const std::vector<float>& bias() const { return bias_; }
  // Bytes the kernels stream per product: the planes' bits and the scales.
  size_t packed_bytes() const;

  // y[r · ldy + o] for rows x[r · ldx + i], r < rows.
  void forward(const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy,
               const ParallelFor& parallel, Isa isa) const;
  void forward(const float* x, int64_t rows, int64_t ldx, float* y, int64_t ldy,
               const ParallelFor& parallel = {}) const {
    forward(x, rows, ldx, y, ldy, parallel, active_isa());
  }
  // grad_x = grad_y · W: the chain transposed (its planes' transposes are
  // built on the first call and kept).
  void backward_input(const float* gy, int64_t rows, int64_t ldgy, float* gx, int64_t ldgx,
                      const ParallelFor& parallel = {}) const;
  // grads[l][·] += ∂L/∂scales[l] for the inputs x [rows, in] of a forward
  // and its grad_y [rows, out] (L + 1 vectors, sized like the scales).
  void backward_scales(const float* x, int64_t ldx, const float* gy, int64_t ldgy, int64_t rows,
                       float* const* grads, const ParallelFor& parallel = {}) const;

 private:
  const std::vector<SignPlane>& transposes() const;

  std::vector<SignPlane> planes_;
  std::vector<std::vector<float>> scales_;
  std::vector<float> bias_;
  mutable std::unique_ptr<std::once_flag> transposed_once_ = std::make_unique<std::once_flag>();
  mutable std::vector<SignPlane> transposed_;
};

}  // namespace qforge::kernels
