// 2:4-sparse weights: detection, packing, unpacking, and dispatch to the
// per-ISA matmul kernels (sparse24.hpp).
#include <qforge_kernels/sparse24.hpp>

#include "sparse24_args.inc"
#include "dispatch.hpp"

#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace qforge::kernels::sparse24 {
namespace {

[[noreturn]] void bad(const std::string& message) {
  throw std::invalid_argument("sparse24: " + message);
}

const detail::Sparse24Kernels& kernels(Isa isa) {
  return detail::table_for(isa, QFORGE_ISA_TABLES(sparse24));
}

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

}  // namespace

bool is_24(const float* w, int64_t out, int64_t in) {
  if (in <= 0 || in % 4 != 0 || out < 0 || (w == nullptr && out > 0)) return false;
  const int64_t n = out * in;
  for (int64_t g = 0; g < n; g += 4) {
    const int zeros = (w[g] == 0.f) + (w[g + 1] == 0.f) + (w[g + 2] == 0.f) + (w[g + 3] == 0.f);
    if (zeros < 2) return false;
  }
  return true;
}

Packed pack(const float* w, int64_t out, int64_t in) {
  if (in <= 0 || in % 4 != 0) bad("in_features must be a positive multiple of 4");
  if (out < 0) bad("out_features must be >= 0");
  if (w == nullptr && out > 0) bad("weights are required");
  Packed p;
  p.out = out;
  p.in = in;
  const int64_t kept = p.kept(), words = p.words();
  p.values.assign(static_cast<size_t>(out * kept), 0.f);
  p.indices.assign(static_cast<size_t>(out * words), 0u);
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t g = 0; g < in / 4; ++g) {
      const float* wg = w + o * in + 4 * g;
      int pos[2], n = 0;
      // Nonzero weights first (NaN included), then -0.0, then +0.0.
      for (int j = 0; j < 4; ++j)
        if (wg[j] != 0.f) {
          if (n == 2) bad("row " + std::to_string(o) + ", inputs " + std::to_string(4 * g) + ".." +
                          std::to_string(4 * g + 3) + ": more than 2 nonzero weights in a group of 4");
          pos[n++] = j;
        }
      for (int j = 0; j < 4 && n < 2; ++j)
        if (bits_of(wg[j]) == 0x80000000u) pos[n++] = j;
      for (int j = 0; j < 4 && n < 2; ++j)
        if (bits_of(wg[j]) == 0u) pos[n++] = j;
      if (pos[0] > pos[1]) std::swap(pos[0], pos[1]);
      for (int s = 0; s < 2; ++s) {
        const int64_t k = 2 * g + s;
        p.values[static_cast<size_t>(o * kept + k)] = wg[pos[s]];
        p.indices[static_cast<size_t>(o * words + k / 16)] |= static_cast<uint32_t>(pos[s])
                                                              << (2 * (k % 16));
      }
    }
  }
  return p;
}

void unpack(const Packed& p, float* w) {
  const int64_t kept = p.kept();
  if (p.out > 0 && w == nullptr) bad("unpack: no destination");
  for (int64_t o = 0; o < p.out; ++o) {
    float* row = w + o * p.in;
    std::memset(row, 0, static_cast<size_t>(p.in) * sizeof(float));
    for (int64_t k = 0; k < kept; ++k)
      row[4 * (k / 2) + p.code(o, k)] = p.values[static_cast<size_t>(o * kept + k)];
  }
}

void matmul_outputs(const Packed& p, const float* x, int64_t rows, float* y, const float* bias,
                    int64_t o0, int64_t o1, Isa isa) {
  if (o0 < 0 || o1 > p.out || o0 > o1) bad("output range out of bounds");
  if (rows < 0) bad("rows must be >= 0");
  if (p.values.size() != static_cast<size_t>(p.out * p.kept()) ||
      p.indices.size() != static_cast<size_t>(p.out * p.words()))
    bad("inconsistent Packed sizes");
  const detail::Sparse24Kernels& k = kernels(isa);
  if (rows == 0 || o0 == o1) return;
  if (x == nullptr || y == nullptr) bad("x and y are required");
  const detail::Sparse24View v{p.values.data(), p.indices.data(), p.out, p.in, p.kept(), p.words()};
  const detail::Sparse24Call c{rows, x, y, bias};
  k.matmul(v, c, o0, o1);
}

void matmul(const Packed& p, const float* x, int64_t rows, float* y, const float* bias) {
  matmul_outputs(p, x, rows, y, bias, 0, p.out, active_isa());
}

}  // namespace qforge::kernels::sparse24
