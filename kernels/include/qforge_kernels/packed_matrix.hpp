// Packed low-bit weight matrices and their CPU matmul kernels.
//
// A PackedMatrix is built once (when an inference layer is created) from a
// neutral description of a group-quantized weight W [out, in]:
//
//   W[o, i] = scale[g, o] * (q[i, o] - zero[g, o]),   g = group of input i
//
// with codes q of 2..8 bits, float32 scales and zero points, and the group of
// every input column either i / group_size or an arbitrary g_idx (GPTQ
// act-order: the groups need not be contiguous nor aligned to anything).
//
// Internal layout (what the SIMD kernels stream through, in this order):
//   - the inputs are permuted once so that each group's columns are
//     contiguous (a stable sort by group; the identity without act-order);
//   - the outputs are cut into tiles of 16 (the last one zero-padded): one
//     SIMD lane per output;
//   - per tile, per chunk of 32 permuted inputs: `bits` words per lane,
//     i.e. bits x 16 uint32, holding each lane's 32 codes as one LSB-first
//     bit stream (3-bit codes straddle words). A tile's chunks are
//     contiguous, so a thread given a range of tiles reads one sequential
//     stream; the code bytes are exactly bits * 16 * 32 / 8 per tile and chunk
//     (no padding except the last chunk's and the last tile's);
//   - per tile and group, 16 scales (float16 when every scale is exactly a
//     float16, else float32) and 16 zero points (uint8 when every zero point
//     is an integer in [0, 255], else float32).
//
// The groups are visited as "segments": runs of whole chunks covering one
// group's permuted columns (at most kMaxSegmentChunks chunks each). A chunk in
// which one group ends and the next begins belongs to both segments and is
// read twice; the activations staged for each segment are zero outside it.
//
// Kernels (y[m, o] = sum_i x[m, i] W[o, i] for a batch of rows): a lane's code
// becomes the float 1 + q / 2^bits with one shift and one and/or (its bits
// placed under the exponent of 1.0: no int->float conversion), and x is
// broadcast into FMAs over the 16 lanes. With several rows (the shift and
// mask shared between them) each code is centred exactly, (1 + q / 2^bits) -
// (1 + z / 2^bits), so a segment's sums are those of a plain float32 dot
// product with W and y += 2^bits s acc. With one row that subtraction is
// skipped (the kernel is closest to compute-bound there): the sums
// acc = sum x (1 + q / 2^bits) then carry sum x, and once per segment
//     y += (2^bits s) acc - s (2^bits + z) sum_x
// (= s (sum x q - z sum x)), with rounding errors a few times a float32 dot
// product's. Rows are processed in register-blocked passes of up to 8 (4 for
// AVX2 and portable), each tile's codes read from memory once per block of
// 64 rows. Portable C++ (GCC/Clang vector extensions), AVX2+FMA+F16C and
// AVX-512 (F/BW/VL) versions of the same code are compiled in separate
// translation units with their own -m flags and picked at run time
// (active_isa()). The library does no threading: callers split the tiles
// between threads (qforge_kernels/torch_matmul.hpp does, for LibTorch users).
//
// dequantize_* write W in float32 as scale * (q - zero) (in that order, no
// fused multiply-add), so the result is bit-identical on every ISA and equal
// to what a quantizer computing the same expression produced.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace qforge::kernels {

namespace detail {
struct MatrixView;
}

// ---------------------------------------------------------------------------
// Instruction sets and dispatch
// ---------------------------------------------------------------------------

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

// "portable", "avx2", "avx512".
const char* isa_name(Isa isa);
// Compiled in, and the CPU and OS support it (AVX2 needs FMA and F16C;
// AVX-512 needs F, BW and VL).
bool isa_supported(Isa isa);
// Every supported ISA, portable first.
std::vector<Isa> supported_isas();
// The fastest supported ISA.
Isa best_isa();
// The ISA the kernels use when none is passed: the one set by set_isa(); else
// the environment variable QFORGE_KERNEL (portable|avx2|avx512|auto, read
// once; an unknown or unsupported value means auto); else best_isa().
Isa active_isa();
// Forces `isa` for later calls without an explicit ISA (tests, benchmarks).
// Throws std::invalid_argument when it is not supported.
void set_isa(Isa isa);
// Undoes set_isa().
void reset_isa();

// ---------------------------------------------------------------------------
// Packed matrix
// ---------------------------------------------------------------------------

// A neutral description of a quantized weight; only read during construction.
struct QuantizedWeight {
  int bits = 4;               // 2..8
  int64_t in_features = 0;    // >= 1
  int64_t out_features = 0;   // >= 1
  // The codes of output o form one bit stream along the input (bitpack.hpp
  // layout, words_for(in, bits) words); its word w is
  // codes[w * code_word_stride + o * code_out_stride]. AutoGPTQ's qweight
  // [words, out] is (stride out, 1); a row-major [out, words] is (1, words).
  const uint32_t* codes = nullptr;
  int64_t code_word_stride = 0, code_out_stride = 0;
  int64_t groups = 1;             // >= 1
  const int32_t* g_idx = nullptr; // [in] group of each input, each in [0, groups); or
  int64_t group_size = 0;         // when g_idx is null: group of input i = i / group_size
  // scale of (group g, output o) = scales[g * scale_group_stride + o * scale_out_stride];
  // zero points likewise.
  const float* scales = nullptr;
  int64_t scale_group_stride = 0, scale_out_stride = 0;
  const float* zeros = nullptr;
  int64_t zero_group_stride = 0, zero_out_stride = 0;
};

// parallel_for(begin, end, fn): calls fn(b, e) on sub-ranges covering
// [begin, end), possibly concurrently. An empty function means serial.
using ParallelFor =
    std::function<void(int64_t, int64_t, const std::function<void(int64_t, int64_t)>&)>;

class PackedMatrix {
 public:
  static constexpr int64_t kTile = 16;             // outputs per tile (SIMD lanes)
  static constexpr int64_t kChunk = 32;            // inputs per chunk
  static constexpr int64_t kMaxSegmentChunks = 4;   // longest run accumulated in one sum

  PackedMatrix() = default;
  // Validates and repacks; throws std::invalid_argument on a bad description
  // (bits, sizes, a g_idx value out of range, missing pointers).
  explicit PackedMatrix(const QuantizedWeight& w, const ParallelFor& parallel = {});

  bool empty() const { return out_ == 0; }
  int bits() const { return bits_; }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }
  int64_t groups() const { return groups_; }
  int64_t tiles() const { return tiles_; }
  // Inputs reordered (g_idx not sorted).
  bool permuted() const { return permuted_; }
  bool scales_are_f16() const { return scales_f16_; }
  bool zeros_are_u8() const { return zeros_u8_; }
  // Bytes the kernels stream: codes, scales, zero points as stored.
  size_t code_bytes() const { return codes_.size() * sizeof(uint32_t); }
  size_t packed_bytes() const { return code_bytes() + scales_.size() + zeros_.size(); }

  // Activations staged for one call: permuted, per segment, with the
  // per-segment sums. Built by prepare(), then read concurrently by gemm().
  struct Input {
    int64_t rows = 0;
    std::vector<float> x;     // [rows][staged length]
    std::vector<float> sums;  // [rows][segments]
  };
  // Stages rows x[r * ldx + i], r < rows, i < in.
  void prepare(const float* x, int64_t rows, int64_t ldx, Input& input) const;

  // y[r * ldy + o] = sum_i x[r, i] W[o, i] (+ bias[o] when bias is not null)
  // for every staged row r and the outputs o of tiles [t0, t1), i.e.
  // [16 t0, min(16 t1, out)). Thread-safe for disjoint tile ranges.
  void gemm(const Input& input, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias, Isa isa) const;
  void gemm(const Input& input, int64_t t0, int64_t t1, float* y, int64_t ldy,
            const float* bias) const {
    gemm(input, t0, t1, y, ldy, bias, active_isa());
  }

  // W transposed, for the outputs of tiles [t0, t1):
  // dst[i * ld + (o - 16 t0)] = W[o, i]. Writes 16 (t1 - t0) columns (zeros
  // past out_features), so ld >= 16 (t1 - t0).
  void dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld, Isa isa) const;
  void dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld) const {
    dequantize_transposed(t0, t1, dst, ld, active_isa());
  }
  // W row by row: dst[(o - 16 t0) * ld + i] = W[o, i] for the outputs of
  // tiles [t0, t1) below out_features.
  void dequantize_rows(int64_t t0, int64_t t1, float* dst, int64_t ld) const;

  // Replaces the scales and zero points (scale of group g, output o =
  // scales[g * sgs + o * sos], zero points likewise), the codes kept: what
  // tuning a grid's parameters changes. Stored as the constructor stores them.
  void set_group_params(const float* scales, int64_t sgs, int64_t sos, const float* zeros,
                        int64_t zgs, int64_t zos);
  // The scales and zero points as float32, [groups][out] each.
  void group_params(float* scales, float* zeros) const;

 private:
  void fill_view(detail::MatrixView& v) const;

  int bits_ = 0;
  int64_t in_ = 0, out_ = 0, groups_ = 0, tiles_ = 0, chunks_ = 0;
  bool permuted_ = false, scales_f16_ = false, zeros_u8_ = false;
  std::vector<int32_t> perm_;  // permuted position p holds input perm_[p]
  // Segments: group, first chunk, chunk count, staged offset, permuted
  // positions [begin, end).
  std::vector<int32_t> seg_group_, seg_chunk0_, seg_chunks_;
  std::vector<int64_t> seg_xoff_, seg_begin_, seg_end_;
  int64_t staged_ = 0;  // staged floats per row
  std::vector<uint32_t> codes_;  // [tiles][chunks][bits][16]
  std::vector<uint8_t> scales_;  // [tiles][groups][16] float16 or float32
  std::vector<uint8_t> zeros_;   // [tiles][groups][16] uint8 or float32
};

}  // namespace qforge::kernels
