// Int8Matrix: construction (validation, repacking), activation quantization,
// and dispatch to the per-path INT8 kernels (int8_matmul.hpp).
#include <qforge_kernels/int8_matmul.hpp>

#include "int8_args.inc"

#include <cmath>
#include <stdexcept>
#include <string>

#if defined(QFORGE_KERNELS_X86) && defined(__GNUC__)
#include <cpuid.h>
#endif
#if defined(QFORGE_KERNELS_X86) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace qforge::kernels {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("Int8Matrix: " + message);
}

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

constexpr Int8Path kAllPaths[] = {Int8Path::kPortable, Int8Path::kAvx2, Int8Path::kAvx512Vnni,
                                  Int8Path::kAmx};

// AMX-TILE and AMX-INT8 on the CPU, the tile state enabled by the OS (XCR0
// bits 17-18), and Linux's per-process permission to use the tile data
// (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), Linux >= 5.16).
bool amx_usable() {
#if defined(QFORGE_KERNELS_X86) && defined(__GNUC__) && defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (d & (3u << 24)) != (3u << 24)) return false;
  if (!__get_cpuid(1, &a, &b, &c, &d) || (c & bit_OSXSAVE) == 0) return false;
  unsigned xcr0 = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0), "=d"(xcr0_hi) : "c"(0));
  if ((xcr0 & (3u << 17)) != (3u << 17)) return false;
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

bool cpu_has(Int8Path path) {
  switch (path) {
    case Int8Path::kPortable: return true;
    case Int8Path::kAvx2: return isa_supported(Isa::kAvx2);
#if defined(QFORGE_KERNELS_X86) && defined(__GNUC__)
    case Int8Path::kAvx512Vnni:
      return isa_supported(Isa::kAvx512) && __builtin_cpu_supports("avx512vnni");
    case Int8Path::kAmx: return cpu_has(Int8Path::kAvx512Vnni) && amx_usable();
#endif
    default: return false;
  }
}

const detail::Int8Kernels* table_of(Int8Path path) {
  switch (path) {
    case Int8Path::kPortable: return detail::int8_portable_kernels();
#if defined(QFORGE_KERNELS_X86)
    case Int8Path::kAvx2: return detail::int8_avx2_kernels();
    case Int8Path::kAvx512Vnni: return detail::int8_avx512_kernels();
    case Int8Path::kAmx: return detail::int8_amx_kernels();
#endif
    default: return nullptr;
  }
}

bool supported(Int8Path path) {
  static const bool ok[4] = {
      true, table_of(Int8Path::kAvx2) != nullptr && cpu_has(Int8Path::kAvx2),
      table_of(Int8Path::kAvx512Vnni) != nullptr && cpu_has(Int8Path::kAvx512Vnni),
      table_of(Int8Path::kAmx) != nullptr && cpu_has(Int8Path::kAmx)};
  const int k = static_cast<int>(path);
  return k >= 0 && k < 4 && ok[k];
}

const detail::Int8Kernels& kernels(Int8Path path) {
  if (!supported(path))
    throw std::invalid_argument(std::string("INT8 path ") + int8_path_name(path) +
                                " is not supported on this machine or build");
  return *table_of(path);
}

// The quantizer of a path: AMX has none of its own and uses AVX-512's.
const detail::Int8Kernels& quantizer(Int8Path path) {
  const detail::Int8Kernels& k = kernels(path);
  return k.encode != nullptr ? k : kernels(Int8Path::kAvx512Vnni);
}

}  // namespace

const char* int8_path_name(Int8Path path) {
  switch (path) {
    case Int8Path::kPortable: return "portable";
    case Int8Path::kAvx2: return "avx2";
    case Int8Path::kAvx512Vnni: return "avx512-vnni";
    case Int8Path::kAmx: return "amx";
  }
  return "unknown";
}

bool int8_path_supported(Int8Path path) { return supported(path); }

std::vector<Int8Path> int8_paths() {
  std::vector<Int8Path> out;
  for (Int8Path p : kAllPaths)
    if (supported(p)) out.push_back(p);
  return out;
}

Int8Path int8_path_for(Isa isa) {
  Int8Path best = Int8Path::kPortable;
  for (Int8Path p : kAllPaths)
    if (supported(p)) best = p;
  if (isa == Isa::kPortable) return Int8Path::kPortable;
  if (isa == Isa::kAvx2 && supported(Int8Path::kAvx2)) return Int8Path::kAvx2;
  return best;
}

Int8Path active_int8_path() { return int8_path_for(active_isa()); }

namespace detail {
float row_absmax(const float* x, int64_t n, Isa isa) {
  return quantizer(int8_path_for(isa)).absmax(x, n);
}
}  // namespace detail

// ---------------------------------------------------------------------------
// Activations
// ---------------------------------------------------------------------------

void Int8Activations::resize(int64_t n_rows, int64_t n_in) {
  if (n_rows < 0 || n_in < 1 || n_in > kMaxInFeatures)
    throw std::invalid_argument("Int8Activations: bad size");
  rows = n_rows;
  in = n_in;
  ld = (n_in + kInt8Pad - 1) / kInt8Pad * kInt8Pad;
  codes.assign(static_cast<size_t>(rows * ld), 0);
  scales.assign(static_cast<size_t>(rows), 0.f);
  sums.assign(static_cast<size_t>(rows), 0);
}

void quantize_int8(const float* x, int64_t ldx, int64_t r0, int64_t r1, float static_scale,
                   Int8Activations& a, Int8Path path) {
  if (r0 < 0 || r1 > a.rows || r0 > r1) throw std::invalid_argument("quantize_int8: bad rows");
  if (!(static_scale >= 0.f) || std::isinf(static_scale))
    throw std::invalid_argument("quantize_int8: a static scale must be finite and > 0");
  const detail::Int8Kernels& k = quantizer(path);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * ldx;
    const detail::RowScale rs =
        detail::row_scale(static_scale, 127.0f, [&] { return k.absmax(xr, a.in); });
    a.scales[static_cast<size_t>(r)] = rs.s;
    a.sums[static_cast<size_t>(r)] = k.encode(xr, a.in, rs.inv, a.codes.data() + r * a.ld);
  }
}

Int8Activations quantize_int8(const float* x, int64_t rows, int64_t in, int64_t ldx,
                              float static_scale) {
  Int8Activations a;
  a.resize(rows, in);
  quantize_int8(x, ldx, 0, rows, static_scale, a, active_int8_path());
  return a;
}

// ---------------------------------------------------------------------------
// Weight matrix
// ---------------------------------------------------------------------------

Int8Matrix::Int8Matrix(const int8_t* w, int64_t out, int64_t in, int64_t ldw, const float* scales) {
  if (in < 1 || in > kMaxInFeatures)
    bad("in_features must be in [1, " + std::to_string(kMaxInFeatures) + "], got " +
        std::to_string(in));
  if (out < 1 || out > (int64_t{1} << 31) - 1) bad("out_features must be in [1, 2^31 - 1]");
  if (ldw < in) bad("ldw must be >= in_features");
  if (w == nullptr || scales == nullptr) bad("weights and scales are required");
  for (int64_t o = 0; o < out; ++o)
    if (!std::isfinite(scales[o])) bad("scale " + std::to_string(o) + " is not finite");
  in_ = in;
  out_ = out;
  ld_ = (in + kInt8Pad - 1) / kInt8Pad * kInt8Pad;
  tiles_ = (out + kTile - 1) / kTile;
  const int64_t groups = ld_ / 4;
  w_.assign(static_cast<size_t>(tiles_ * groups * 64), 128);  // padding: q_w = 0
  scales_.assign(static_cast<size_t>(tiles_ * kTile), 0.f);
  for (int64_t o = 0; o < out; ++o) {
    const int64_t t = o / kTile, lane = o % kTile;
    uint8_t* dst = w_.data() + t * groups * 64 + lane * 4;
    for (int64_t i = 0; i < in; ++i)
      dst[(i / 4) * 64 + i % 4] = static_cast<uint8_t>(w[o * ldw + i] + 128);
    scales_[static_cast<size_t>(o)] = scales[o];
  }
}

int8_t Int8Matrix::code(int64_t o, int64_t i) const {
  const int64_t t = o / kTile, lane = o % kTile;
  const uint8_t u = w_[static_cast<size_t>(t * ld_ * kTile + (i / 4) * 64 + lane * 4 + i % 4)];
  return static_cast<int8_t>(static_cast<int>(u) - 128);
}

void Int8Matrix::run(const Int8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
                     const float* bias, int32_t* acc, int64_t ldc, Int8Path path) const {
  if (t0 < 0 || t1 > tiles_ || t0 > t1) bad("tile range out of bounds");
  if (x.in != in_ || x.ld != ld_) bad("activations were quantized for another in_features");
  if (x.rows == 0 || t0 == t1) return;
  const detail::Int8View v{w_.data(), scales_.data(), out_, tiles_, ld_ / 4};
  const detail::Int8Call c{
      x.rows, x.codes.data(), x.ld, x.scales.data(), x.sums.data(), y, ldy, bias, acc, ldc};
  kernels(path).gemm(v, c, t0, t1);
}

void Int8Matrix::gemm(const Int8Activations& x, int64_t t0, int64_t t1, float* y, int64_t ldy,
                      const float* bias, Int8Path path) const {
  run(x, t0, t1, y, ldy, bias, nullptr, 0, path);
}

void Int8Matrix::gemm_int32(const Int8Activations& x, int64_t t0, int64_t t1, int32_t* acc,
                            int64_t ldc, Int8Path path) const {
  run(x, t0, t1, nullptr, 0, nullptr, acc, ldc, path);
}

void Int8Matrix::dequantize_rows(int64_t o0, int64_t o1, float* dst, int64_t ld) const {
  if (o0 < 0 || o1 > out_ || o0 > o1) bad("output range out of bounds");
  for (int64_t o = o0; o < o1; ++o) {
    const float s = scales_[static_cast<size_t>(o)];
    const uint8_t* lane = w_.data() + (o / kTile) * ld_ * kTile + (o % kTile) * 4;
    float* row = dst + (o - o0) * ld;
    for (int64_t i = 0; i < in_; ++i)
      row[i] = s * static_cast<float>(static_cast<int>(lane[(i / 4) * 64 + i % 4]) - 128);
  }
}

}  // namespace qforge::kernels
