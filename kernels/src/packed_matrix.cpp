// PackedMatrix: construction (validation, permutation, segments, repacking),
// activation staging, and dispatch to the per-ISA kernels.
#include <qforge_kernels/bitpack.hpp>
#include <qforge_kernels/packed_matrix.hpp>

#include "dispatch.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace qforge::kernels {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("PackedMatrix: " + message);
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

bool cpu_has(Isa isa) {
  if (isa == Isa::kPortable) return true;
#if defined(QFORGE_KERNELS_X86) && defined(__GNUC__)
  __builtin_cpu_init();
  unsigned a = 0, b = 0, c = 0, d = 0;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  if (isa == Isa::kAvx2) return avx2;
  if (isa == Isa::kAvx512)
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#endif
  return false;
}

const detail::KernelTable* table_of(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return detail::portable_kernels();
#if defined(QFORGE_KERNELS_X86)
    case Isa::kAvx2: return detail::avx2_kernels();
    case Isa::kAvx512: return detail::avx512_kernels();
#endif
    default: return nullptr;
  }
}

bool supported(Isa isa) {
  static const bool ok[3] = {true, table_of(Isa::kAvx2) != nullptr && cpu_has(Isa::kAvx2),
                             table_of(Isa::kAvx512) != nullptr && cpu_has(Isa::kAvx512)};
  const int k = static_cast<int>(isa);
  return k >= 0 && k < 3 && ok[k];
}

Isa best() {
  if (supported(Isa::kAvx512)) return Isa::kAvx512;
  if (supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kPortable;
}

Isa from_environment() {
  static const Isa isa = [] {
    const char* e = std::getenv("QFORGE_KERNEL");
    const std::string v = e != nullptr ? e : "";
    for (Isa k : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
      if (v == isa_name(k) && supported(k)) return k;
    return best();
  }();
  return isa;
}

std::atomic<int> g_forced{-1};

const detail::KernelTable& kernels(Isa isa) { return detail::kernels_for(isa); }

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// The float16 bits of f when f is exactly a float16 value (NaN excluded).
bool exact_half(float f, uint16_t& h) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t e = (b >> 23) & 0xFFu, m = b & 0x7FFFFFu;
  if (e == 0xFF) {  // inf yes, NaN no
    h = static_cast<uint16_t>(sign | 0x7C00u);
    return m == 0;
  }
  if (e == 0) {  // zero; float subnormals are below float16's range
    h = sign;
    return m == 0;
  }
  const int E = static_cast<int>(e) - 127;
  if (E > 15) return false;
  if (E >= -14) {  // float16 normal: 10 mantissa bits
    if ((m & 0x1FFFu) != 0) return false;
    h = static_cast<uint16_t>(sign | ((E + 15) << 10) | (m >> 13));
    return true;
  }
  if (E < -24) return false;
  // float16 subnormal k * 2^-24 with k = (1.m) 2^(E + 24) = (2^23 + m) >> -(E + 1)
  const uint32_t full = 0x800000u | m;
  const int shift = -(E + 1);
  if ((full & ((1u << shift) - 1u)) != 0) return false;
  h = static_cast<uint16_t>(sign | (full >> shift));
  return true;
}

void run(const ParallelFor& parallel, int64_t n, const std::function<void(int64_t, int64_t)>& f) {
  if (n <= 0) return;
  if (parallel)
    parallel(0, n, f);
  else
    f(0, n);
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kPortable: return "portable";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "unknown";
}

bool isa_supported(Isa isa) { return supported(isa); }

std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (Isa k : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
    if (supported(k)) out.push_back(k);
  return out;
}

Isa best_isa() { return best(); }

Isa active_isa() {
  const int forced = g_forced.load(std::memory_order_relaxed);
  return forced >= 0 ? static_cast<Isa>(forced) : from_environment();
}

void set_isa(Isa isa) {
  if (!supported(isa))
    throw std::invalid_argument(std::string("instruction set ") + isa_name(isa) +
                                " is not supported on this machine or build");
  g_forced.store(static_cast<int>(isa), std::memory_order_relaxed);
}

void reset_isa() { g_forced.store(-1, std::memory_order_relaxed); }

// ---------------------------------------------------------------------------
// Construction
// ---------------------------------------------------------------------------

PackedMatrix::PackedMatrix(const QuantizedWeight& w, const ParallelFor& parallel) {
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  if (w.bits < kMinPackBits || w.bits > kMaxPackBits)
    bad("bits must be in [2, 8], got " + std::to_string(w.bits));
  if (w.in_features < 1 || w.in_features > kMax || w.out_features < 1 || w.out_features > kMax)
    bad("in_features and out_features must be in [1, 2^31 - 1]");
  if (w.groups < 1 || w.groups > kMax) bad("groups must be in [1, 2^31 - 1]");
  if (w.codes == nullptr || w.scales == nullptr || w.zeros == nullptr)
    bad("codes, scales and zeros are required");
  bits_ = w.bits;
  in_ = w.in_features;
  out_ = w.out_features;
  groups_ = w.groups;
  tiles_ = (out_ + kTile - 1) / kTile;
  chunks_ = (in_ + kChunk - 1) / kChunk;

  // Group of every input, then a stable counting sort by group.
  std::vector<int32_t> group(static_cast<size_t>(in_));
  if (w.g_idx != nullptr) {
    for (int64_t i = 0; i < in_; ++i) {
      const int32_t g = w.g_idx[i];
      if (g < 0 || g >= groups_)
        bad("g_idx[" + std::to_string(i) + "] = " + std::to_string(g) + " is not in [0, " +
            std::to_string(groups_) + ")");
      group[i] = g;
    }
  } else {
    if (w.group_size < 1) bad("group_size must be >= 1 without g_idx");
    if ((in_ - 1) / w.group_size >= groups_)
      bad("in_features / group_size needs more than " + std::to_string(groups_) + " groups");
    for (int64_t i = 0; i < in_; ++i) group[i] = static_cast<int32_t>(i / w.group_size);
  }
  std::vector<int64_t> start(static_cast<size_t>(groups_) + 1, 0);
  for (int64_t i = 0; i < in_; ++i) ++start[group[i] + 1];
  for (int64_t g = 0; g < groups_; ++g) start[g + 1] += start[g];
  perm_.resize(static_cast<size_t>(in_));
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < in_; ++i) perm_[next[group[i]]++] = static_cast<int32_t>(i);
  }
  permuted_ = false;
  for (int64_t p = 0; p < in_ && !permuted_; ++p) permuted_ = perm_[p] != p;

  // Segments: each group's permuted positions, cut at most every
  // kMaxSegmentChunks chunks.
  staged_ = 0;
  for (int64_t g = 0; g < groups_; ++g) {
    for (int64_t p = start[g]; p < start[g + 1];) {
      const int64_t c0 = p / kChunk;
      const int64_t q = std::min(start[g + 1], (c0 + kMaxSegmentChunks) * kChunk);
      const int64_t nc = (q + kChunk - 1) / kChunk - c0;
      seg_group_.push_back(static_cast<int32_t>(g));
      seg_chunk0_.push_back(static_cast<int32_t>(c0));
      seg_chunks_.push_back(static_cast<int32_t>(nc));
      seg_xoff_.push_back(staged_);
      seg_begin_.push_back(p);
      seg_end_.push_back(q);
      staged_ += nc * kChunk;
      p = q;
    }
  }

  // Codes: unpack each output's stream, permute, repack chunk by chunk.
  const int64_t words = words_for(in_, bits_);
  const int64_t chunk_words = bits_ * kTile;  // per tile and chunk
  codes_.assign(static_cast<size_t>(tiles_ * chunks_ * chunk_words), 0u);
  run(parallel, tiles_, [&](int64_t t0, int64_t t1) {
    std::vector<uint32_t> stream(static_cast<size_t>(words));
    std::vector<uint8_t> codes(static_cast<size_t>(in_));
    std::vector<uint8_t> permuted(static_cast<size_t>(chunks_ * kChunk), 0);
    uint32_t packed[kMaxPackBits];
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t lane = 0; lane < kTile && t * kTile + lane < out_; ++lane) {
        const int64_t o = t * kTile + lane;
        for (int64_t k = 0; k < words; ++k)
          stream[k] = w.codes[k * w.code_word_stride + o * w.code_out_stride];
        unpack_bits(stream.data(), in_, bits_, codes.data());
        for (int64_t p = 0; p < in_; ++p) permuted[p] = codes[perm_[p]];
        uint32_t* dst = codes_.data() + t * chunks_ * chunk_words + lane;
        for (int64_t c = 0; c < chunks_; ++c) {
          pack_bits(permuted.data() + c * kChunk, kChunk, bits_, packed);
          for (int k = 0; k < bits_; ++k) dst[(c * bits_ + k) * kTile] = packed[k];
        }
      }
    }
  });

  set_group_params(w.scales, w.scale_group_stride, w.scale_out_stride, w.zeros,
                   w.zero_group_stride, w.zero_out_stride);
}

// Scales as float16 when all are exactly float16, zero points as uint8 when
// all are integers in [0, 255]; padded lanes hold 0.
void PackedMatrix::set_group_params(const float* scales, int64_t sgs, int64_t sos,
                                    const float* zeros, int64_t zgs, int64_t zos) {
  scales_f16_ = zeros_u8_ = true;
  for (int64_t g = 0; g < groups_; ++g) {
    for (int64_t o = 0; o < out_; ++o) {
      uint16_t h;
      if (scales_f16_ && !exact_half(scales[g * sgs + o * sos], h)) scales_f16_ = false;
      const float z = zeros[g * zgs + o * zos];
      if (zeros_u8_ && !(z >= 0.f && z <= 255.f && z == std::floor(z))) zeros_u8_ = false;
    }
  }
  const size_t entries = static_cast<size_t>(tiles_ * groups_ * kTile);
  scales_.assign(entries * (scales_f16_ ? 2 : 4), 0);
  zeros_.assign(entries * (zeros_u8_ ? 1 : 4), 0);
  for (int64_t t = 0; t < tiles_; ++t) {
    for (int64_t g = 0; g < groups_; ++g) {
      for (int64_t lane = 0; lane < kTile && t * kTile + lane < out_; ++lane) {
        const int64_t o = t * kTile + lane;
        const size_t idx = static_cast<size_t>((t * groups_ + g) * kTile + lane);
        const float sc = scales[g * sgs + o * sos];
        const float z = zeros[g * zgs + o * zos];
        if (scales_f16_) {
          uint16_t h = 0;
          exact_half(sc, h);
          std::memcpy(scales_.data() + 2 * idx, &h, 2);
        } else {
          std::memcpy(scales_.data() + 4 * idx, &sc, 4);
        }
        if (zeros_u8_)
          zeros_[idx] = static_cast<uint8_t>(z);
        else
          std::memcpy(zeros_.data() + 4 * idx, &z, 4);
      }
    }
  }
}

void PackedMatrix::group_params(float* scales, float* zeros) const {
  for (int64_t t = 0; t < tiles_; ++t)
    for (int64_t g = 0; g < groups_; ++g)
      for (int64_t lane = 0; lane < kTile && t * kTile + lane < out_; ++lane) {
        const int64_t o = t * kTile + lane;
        const size_t idx = static_cast<size_t>((t * groups_ + g) * kTile + lane);
        float sc, z;
        if (scales_f16_) {
          uint16_t h;
          std::memcpy(&h, scales_.data() + 2 * idx, 2);
          sc = detail::half_to_float(h);
        } else {
          std::memcpy(&sc, scales_.data() + 4 * idx, 4);
        }
        if (zeros_u8_)
          z = zeros_[idx];
        else
          std::memcpy(&z, zeros_.data() + 4 * idx, 4);
        scales[g * out_ + o] = sc;
        zeros[g * out_ + o] = z;
      }
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

void PackedMatrix::fill_view(detail::MatrixView& v) const {
  v.bits = bits_;
  v.out = out_;
  v.tiles = tiles_;
  v.chunks = chunks_;
  v.groups = groups_;
  v.codes = codes_.data();
  v.scales = scales_.data();
  v.zeros = zeros_.data();
  v.scales_f16 = scales_f16_;
  v.zeros_u8 = zeros_u8_;
  v.segments = static_cast<int64_t>(seg_group_.size());
  v.seg_group = seg_group_.data();
  v.seg_chunk0 = seg_chunk0_.data();
  v.seg_chunks = seg_chunks_.data();
  v.seg_xoff = seg_xoff_.data();
  v.seg_begin = seg_begin_.data();
  v.seg_end = seg_end_.data();
  v.perm = perm_.data();
}

void PackedMatrix::prepare(const float* x, int64_t rows, int64_t ldx, Input& input) const {
  if (rows < 0) bad("negative row count");
  const int64_t segments = static_cast<int64_t>(seg_group_.size());
  input.rows = rows;
  input.x.assign(static_cast<size_t>(rows * staged_), 0.f);
  input.sums.assign(static_cast<size_t>(rows * segments), 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* dst = input.x.data() + r * staged_;
    for (int64_t s = 0; s < segments; ++s) {
      const int64_t begin = seg_begin_[s], end = seg_end_[s];
      float* d = dst + seg_xoff_[s] + (begin - seg_chunk0_[s] * kChunk);
      double sum = 0;
      if (permuted_) {
        for (int64_t p = begin; p < end; ++p) sum += (d[p - begin] = xr[perm_[p]]);
      } else {
        for (int64_t p = begin; p < end; ++p) sum += (d[p - begin] = xr[p]);
      }
      input.sums[r * segments + s] = static_cast<float>(sum);
    }
  }
}

void PackedMatrix::gemm(const Input& input, int64_t t0, int64_t t1, float* y, int64_t ldy,
                        const float* bias, Isa isa) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (input.rows == 0 || t0 == t1) return;
  if (input.x.size() != static_cast<size_t>(input.rows * staged_) ||
      input.sums.size() != static_cast<size_t>(input.rows) * seg_group_.size())
    bad("input was not prepared for this matrix");
  detail::MatrixView v;
  fill_view(v);
  detail::GemmCall c;
  c.rows = input.rows;
  c.x = input.x.data();
  c.ldx = staged_;
  c.sums = input.sums.data();
  c.y = y;
  c.ldy = ldy;
  c.bias = bias;
  kernels(isa).gemm(v, c, t0, t1);
}

void PackedMatrix::dequantize_transposed(int64_t t0, int64_t t1, float* dst, int64_t ld,
                                         Isa isa) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (ld < (t1 - t0) * kTile) bad("leading dimension too small");
  if (t0 == t1) return;
  detail::MatrixView v;
  fill_view(v);
  kernels(isa).dequant_t(v, t0, t1, dst, ld);
}

void PackedMatrix::dequantize_rows(int64_t t0, int64_t t1, float* dst, int64_t ld) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (ld < in_) bad("leading dimension too small");
  std::vector<float> tile(static_cast<size_t>(in_ * kTile));
  for (int64_t t = t0; t < t1; ++t) {
    dequantize_transposed(t, t + 1, tile.data(), kTile);
    for (int64_t lane = 0; lane < kTile && t * kTile + lane < out_; ++lane) {
      float* row = dst + ((t - t0) * kTile + lane) * ld;
      for (int64_t i = 0; i < in_; ++i) row[i] = tile[i * kTile + lane];
    }
  }
}

namespace detail {
const KernelTable& kernels_for(Isa isa) {
  if (!supported(isa))
    throw std::invalid_argument(std::string("instruction set ") + isa_name(isa) + " not supported");
  return *table_of(isa);
}
}  // namespace detail

}  // namespace qforge::kernels
