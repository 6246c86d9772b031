// The portable 2:4-sparse kernels: scalar C++, four partial sums per output
// (groups g % 4), no fused multiply-add (the kernels library compiles with
// -ffp-contract=off). Compiled for the baseline target.
#include "sparse24_args.inc"

#include <cstdint>

namespace qforge::kernels::detail {
namespace {

constexpr int kOneRowOuts = 4, kRows = 1, kOuts = 4;

template <int R, int NO>
void block(const Sparse24View& v, const Sparse24Call& c, int64_t r0, int64_t o0) {
  const int64_t groups = v.in / 4;
  for (int r = 0; r < R; ++r) {
    const float* x = c.x + (r0 + r) * v.in;
    for (int o = 0; o < NO; ++o) {
      const float* w = v.values + (o0 + o) * v.kept;
      const uint32_t* ix = v.idx + (o0 + o) * v.words;
      float s[4] = {0.f, 0.f, 0.f, 0.f};
      int64_t g = 0;
      for (; g + 4 <= groups; g += 4) {  // 8 values, their codes in 16 bits of word g / 8
        const uint32_t codes = ix[g / 8] >> (4 * (g % 8));
        const float* xg = x + 4 * g;
        const float* wg = w + 2 * g;
        for (int j = 0; j < 4; ++j)
          s[j] += wg[2 * j] * xg[4 * j + ((codes >> (4 * j)) & 3)] +
                  wg[2 * j + 1] * xg[4 * j + ((codes >> (4 * j + 2)) & 3)];
      }
      for (; g < groups; ++g) {  // values 2g, 2g + 1: bits 4 (g % 8) .. of word g / 8
        const uint32_t codes = ix[g / 8] >> (4 * (g % 8));
        const float* xg = x + 4 * g;
        s[g % 4] += w[2 * g] * xg[codes & 3] + w[2 * g + 1] * xg[(codes >> 2) & 3];
      }
      float sum = (s[0] + s[1]) + (s[2] + s[3]);
      if (c.bias != nullptr) sum += c.bias[o0 + o];
      c.y[(r0 + r) * v.out + o0 + o] = sum;
    }
  }
}

#include "sparse24_body.inc"

}  // namespace

const Sparse24Kernels* sparse24_portable_kernels() { return &kKernels; }

}  // namespace qforge::kernels::detail
