// Bit packing of low-bit integer codes into 32-bit words.
//
// Layout: the codes form one continuous little-endian bit stream, least
// significant bit first. Code i occupies bits [i*bits, (i+1)*bits) of the
// stream; stream bit k is bit (k % 32) of word k / 32. Codes whose width does
// not divide 32 (3, 5, 6, 7 bits) therefore straddle word boundaries. This is
// the convention of AutoGPTQ's v1 checkpoints (there applied along the input
// dimension of each output column), so a row packed here can be written out as
// a GPTQ qweight column without re-packing codes.
//
// The last word is zero-padded. These functions are portable scalar code with
// no allocation; they are safe to call concurrently on disjoint outputs.
#pragma once

#include <cstdint>

namespace qforge::kernels {

// Smallest and largest supported code widths.
inline constexpr int kMinPackBits = 2;
inline constexpr int kMaxPackBits = 8;

// Number of uint32 words holding n codes of `bits` bits: ceil(n * bits / 32).
// Requires n >= 0 and n * bits to fit in int64_t.
constexpr int64_t words_for(int64_t n, int bits) { return (n * bits + 31) / 32; }

// Packs n codes of `bits` bits (2 <= bits <= 8) into words_for(n, bits) words,
// overwriting them (unused high bits of the last word are zero). Only the low
// `bits` bits of each code are stored; callers pass codes < 2^bits.
// Throws std::invalid_argument for bits outside [2, 8] or n < 0.
void pack_bits(const uint8_t* codes, int64_t n, int bits, uint32_t* words);

// Inverse of pack_bits: reads exactly words_for(n, bits) words and writes n
// codes, each < 2^bits. Padding bits of the last word are ignored.
// Throws std::invalid_argument for bits outside [2, 8] or n < 0.
void unpack_bits(const uint32_t* words, int64_t n, int bits, uint8_t* codes);

}  // namespace qforge::kernels
