// The AMX INT8 kernel: tdpbsud (s8 activation codes x u8 weights q_w + 128)
// on 16 x 64-byte tiles, then acc = acc' - 128 sum_i q_x. The weight layout
// (int8_matmul.hpp) is already AMX's B-tile layout: per tile of 16 outputs,
// 16 groups of 4 inputs = one 16 x 64-byte B tile per 64 inputs.
//
// UNTESTED: written for Sapphire Rapids and later; the development machine
// (AMD Zen 4) has no AMX, so this unit is compiled but has never run. It is
// used only when the CPU reports AMX-TILE and AMX-INT8, the OS enables the
// tile state and Linux grants the tile-data permission (int8_matmul.cpp),
// and the tests then check it like every other path.
//
// Kept deliberately simple (one accumulator tile, A and B reloaded per output
// tile) rather than fast. Compiled with -mamx-tile -mamx-int8.
#include "int8_args.inc"

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace qforge::kernels::detail {
namespace {

// LDTILECFG's 64-byte operand, palette 1.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tmm0..15
  uint8_t rows[16] = {};
};

// tmm0: C (m x 16 int32), tmm1: A (m rows of 64 codes), tmm2: B (16 x 64 bytes).
void configure(int m) {
  TileConfig cfg;
  cfg.rows[0] = cfg.rows[1] = static_cast<uint8_t>(m);
  cfg.rows[2] = 16;
  cfg.colsb[0] = cfg.colsb[1] = cfg.colsb[2] = 64;
  // ldtilecfg with the whole struct as operand: GCC 12's _tile_loadconfig
  // tells the compiler it reads only 8 bytes, so the other fields' stores
  // could be dropped.
  __asm__ volatile("ldtilecfg %0" ::"m"(cfg));
}

// Rows [r0, r0 + m), m <= 16, against tile t.
void block(const Int8View& v, const Int8Call& c, int64_t r0, int m, int64_t t) {
  alignas(64) int32_t out[16][16];
  _tile_zero(0);
  const uint8_t* w = v.w + t * v.groups * 64;
  const int8_t* x = c.x + r0 * c.ldx;
  for (int64_t kb = 0; kb < v.groups / 16; ++kb) {
    _tile_loadd(1, x + kb * 64, c.ldx);
    _tile_loadd(2, w + kb * 16 * 64, 64);
    _tile_dpbsud(0, 1, 2);
  }
  _tile_stored(0, out, 64);
  const int n = static_cast<int>(v.out - t * 16 < 16 ? v.out - t * 16 : 16);
  for (int r = 0; r < m; ++r) {
    const uint32_t offset = 128u * static_cast<uint32_t>(c.x_sums[r0 + r]);  // modulo 2^32
    for (int l = 0; l < 16; ++l)
      out[r][l] = static_cast<int32_t>(static_cast<uint32_t>(out[r][l]) - offset);
    int8_store_row(v, c, r0 + r, t, out[r], n);
  }
}

void gemm(const Int8View& v, const Int8Call& c, int64_t t0, int64_t t1) {
  for (int64_t r = 0; r < c.rows; r += 16) {
    const int m = static_cast<int>(c.rows - r < 16 ? c.rows - r : 16);
    configure(m);
    for (int64_t t = t0; t < t1; ++t) block(v, c, r, m, t);
  }
  _tile_release();
}

// Activations are quantized by the AVX-512 unit (AMX CPUs have AVX-512).
constexpr Int8Kernels kTable = {gemm, nullptr, nullptr};

}  // namespace

const Int8Kernels* int8_amx_kernels() { return &kTable; }

}  // namespace qforge::kernels::detail
