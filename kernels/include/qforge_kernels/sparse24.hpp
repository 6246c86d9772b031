// 2:4-sparse float32 weights (SparseGPT / magnitude pruning: in every group
// of 4 consecutive inputs at most 2 weights are nonzero) and y = x Wᵀ on the
// compressed form.
//
// Format (Packed), for W [out, in] with in a multiple of 4:
//   values   float32 [out][in / 2]: per group of 4 inputs, the 2 kept weights
//            in increasing input order;
//   indices  uint32 [out][words], words = ceil(in / 32): word k of row o holds
//            the positions (0..3, within their group) of kept values
//            16k .. 16k + 15 of that row, value 16k + j at bits 2j, 2j + 1;
//            the codes past the row's last value are 0.
// 4 + 1/4 bytes per kept value: 2.125 bytes per weight of W, against 4.
// Which 2 positions a group keeps: its nonzero weights (!= 0.0f, NaN
// included), then its -0.0 ones, then +0.0 ones, the first first. pack()
// refuses a group with 3 or 4 nonzero weights; unpack() writes W back bit
// for bit (the dropped weights are +0.0).
//
// matmul: y[r, o] = sum_i x[r, i] W[o, i] (+ bias[o]) over the kept weights
// only (a dropped weight times an infinite or NaN input counts as 0, where a
// dense product would give NaN), float32 sums with fused multiply-adds. The
// order of the sums depends on the ISA (lanes, register blocks), so the ISAs
// agree only within float32 rounding. Kernels:
//   AVX-512 (F/BW/VL)  16 kept values = 32 inputs per register: the 2-bit
//                      codes of a broadcast word shifted by 2·lane (vpsrlvd),
//                      masked and offset by 4·(lane / 2) (vpternlogd), the x
//                      values gathered from two registers (vpermt2ps), one FMA;
//   AVX2 (+FMA)        8 kept values = 16 inputs: the codes shifted into the
//                      low 2 bits of each lane (vpsrlvd), x gathered within
//                      its groups (two vpermilps over x rearranged as groups
//                      [0, 2] and [1, 3], one blend), one FMA;
//   portable           scalar C++, several partial sums per output.
// Register blocks: one row x 8 outputs (AVX-512) / 4 (AVX2, portable); 4 rows
// x 4 outputs (AVX-512) / 2 rows x 4 outputs (AVX2) and 1 x 4 (portable),
// with the outputs of a panel (about 128 KiB of values) kept in cache while
// every block of rows runs through it; with one row (memory-bound) the SIMD
// kernels prefetch each output's values 1 KiB ahead (the hardware
// prefetchers alone left a third of the bandwidth unused with 8 streams). Dispatch by Isa (packed_matrix.hpp:
// QFORGE_KERNEL, set_isa()). No threading inside the library (it does not
// link ATen): matmul_outputs() computes a range of outputs and is
// thread-safe for disjoint ranges; matmul(..., parallel_for) splits the
// outputs with a callable shaped like at::parallel_for, e.g.
//   sparse24::matmul(p, x, rows, y, bias, [](int64_t b, int64_t e, int64_t g,
//                                            const auto& f) { at::parallel_for(b, e, g, f); });
#pragma once

#include <qforge_kernels/int8_matmul.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace qforge::kernels::sparse24 {

struct Packed {
  int64_t out = 0, in = 0;
  detail::AlignedVector<float> values;  // [out][in / 2]
  std::vector<uint32_t> indices;        // [out][words()]

  int64_t kept() const { return in / 2; }           // values per row
  int64_t words() const { return (in + 31) / 32; }  // index words per row
  // Bytes the kernels stream per call: values and indices.
  size_t bytes() const { return values.size() * sizeof(float) + indices.size() * sizeof(uint32_t); }
  // The 2-bit position of kept value k (< kept()) of output o in its group.
  int code(int64_t o, int64_t k) const {
    return static_cast<int>(indices[static_cast<size_t>(o * words() + k / 16)] >> (2 * (k % 16))) &
           3;
  }
};

// in > 0, in % 4 == 0, and every group of 4 consecutive inputs of every row
// of w [out][in] holds at least 2 zeros (== 0.0f, -0.0 included).
bool is_24(const float* w, int64_t out, int64_t in);

// The compressed form of w [out][in]. Throws std::invalid_argument when not
// is_24 (or out < 0, or w null with out > 0).
Packed pack(const float* w, int64_t out, int64_t in);

// w [out][in] = the matrix pack() read, bit for bit except that -0.0 weights
// a group had to drop (it holds only 2 slots) come back as +0.0.
void unpack(const Packed& p, float* w);

// y[r * p.out + o] = sum_i x[r * p.in + i] W[o, i] (+ bias[o]) for r < rows
// and o in [o0, o1), with the kernels of `isa`. Thread-safe for disjoint
// output ranges. Throws std::invalid_argument on bad ranges or an ISA the
// machine lacks.
void matmul_outputs(const Packed& p, const float* x, int64_t rows, float* y, const float* bias,
                    int64_t o0, int64_t o1, Isa isa);

// Every output, active_isa(), on the calling thread.
void matmul(const Packed& p, const float* x, int64_t rows, float* y, const float* bias);

// Outputs per task of the parallel matmul: a multiple of the register
// blocks, at least about 64 KiB of values.
inline int64_t output_grain(const Packed& p) {
  const int64_t row_bytes = p.kept() * 4 + p.words() * 4;
  const int64_t g = (int64_t{64} << 10) / (row_bytes > 0 ? row_bytes : 1);
  return g < 8 ? 8 : (g + 7) / 8 * 8;
}

// Every output, active_isa(), split by parallel_for(begin, end, grain,
// f(b, e)) as at::parallel_for does.
template <class ParallelFor>
void matmul(const Packed& p, const float* x, int64_t rows, float* y, const float* bias,
            const ParallelFor& parallel_for) {
  const Isa isa = active_isa();
  parallel_for(int64_t{0}, p.out, output_grain(p), [&](int64_t b, int64_t e) {
    matmul_outputs(p, x, rows, y, bias, b, e, isa);
  });
}

}  // namespace qforge::kernels::sparse24
