// The bit packing of codes (qforge_kernels/bitpack.hpp): round trips at every
// width, hand-computed words, and the straddling of 3-bit codes.
#include <qforge_kernels/bitpack.hpp>

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using qforge::kernels::pack_bits;
using qforge::kernels::unpack_bits;
using qforge::kernels::words_for;

TEST(BitPack, WordsFor) {
  EXPECT_EQ(words_for(0, 4), 0);
  EXPECT_EQ(words_for(1, 2), 1);
  EXPECT_EQ(words_for(8, 4), 1);
  EXPECT_EQ(words_for(9, 4), 2);
  EXPECT_EQ(words_for(32, 3), 3);
  EXPECT_EQ(words_for(33, 3), 4);  // 99 bits
  EXPECT_EQ(words_for(11, 3), 2);  // 33 bits
  EXPECT_EQ(words_for(4, 8), 1);
  EXPECT_EQ(words_for(1000, 7), 219);  // 7000 bits = 218.75 words
}

TEST(BitPack, RoundTripAllWidths) {
  std::mt19937 rng(1234);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t n : {1, 7, 31, 33, 1000}) {
      SCOPED_TRACE("bits=" + std::to_string(bits) + " n=" + std::to_string(n));
      std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
      std::vector<uint8_t> codes(n);
      for (auto& c : codes) c = static_cast<uint8_t>(dist(rng));
      // Start from garbage and put a sentinel after the last word: pack_bits
      // must overwrite exactly words_for(n, bits) words.
      const int64_t nw = words_for(n, bits);
      std::vector<uint32_t> words(nw + 1, 0xDEADBEEFu);
      pack_bits(codes.data(), n, bits, words.data());
      EXPECT_EQ(words[nw], 0xDEADBEEFu);
      const int64_t used = (n * bits) % 32;
      if (used != 0) {
        EXPECT_EQ(words[nw - 1] >> used, 0u) << "padding bits must be zero";
      }

      std::vector<uint8_t> back(n + 1, 0xAB);
      unpack_bits(words.data(), n, bits, back.data());
      EXPECT_EQ(back[n], 0xAB);
      back.pop_back();
      EXPECT_EQ(back, codes);

      // Independent bit-by-bit decoding of the stream.
      for (int64_t i = 0; i < n; ++i) {
        unsigned v = 0;
        for (int b = 0; b < bits; ++b) {
          const int64_t k = i * bits + b;
          v |= ((words[k / 32] >> (k % 32)) & 1u) << b;
        }
        ASSERT_EQ(v, codes[i]) << "code " << i;
      }
    }
  }
}

TEST(BitPack, KnownWords3BitStraddle) {
  // 11 codes x 3 bits = 33 bits: code 10 (= 0b101) straddles the word
  // boundary, its low two bits (01) at bits 30..31 of word 0, its high bit at
  // bit 0 of word 1.
  const std::vector<uint8_t> codes = {1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 5};
  // 1<<0 | 2<<3 | 3<<6 | 4<<9 | 5<<12 | 6<<15 | 7<<18 | 0<<21 | 1<<24 | 2<<27 | 1<<30
  //  = 0x1 + 0x10 + 0xC0 + 0x800 + 0x5000 + 0x30000 + 0x1C0000 + 0x1000000
  //    + 0x10000000 + 0x40000000
  std::vector<uint32_t> words(2, 0xFFFFFFFFu);
  pack_bits(codes.data(), 11, 3, words.data());
  EXPECT_EQ(words[0], 0x511F58D1u);
  EXPECT_EQ(words[1], 0x00000001u);
  std::vector<uint8_t> back(11);
  unpack_bits(words.data(), 11, 3, back.data());
  EXPECT_EQ(back, codes);
}

TEST(BitPack, KnownWords4And2And8Bit) {
  const std::vector<uint8_t> c4 = {1, 2, 3, 4, 5, 6, 7, 8, 0xF};
  std::vector<uint32_t> w4(2);
  pack_bits(c4.data(), 9, 4, w4.data());
  EXPECT_EQ(w4[0], 0x87654321u);
  EXPECT_EQ(w4[1], 0xFu);

  const std::vector<uint8_t> c2 = {3, 0, 1, 2};
  uint32_t w2 = 0xFFFFFFFFu;
  pack_bits(c2.data(), 4, 2, &w2);
  EXPECT_EQ(w2, 0x93u);  // 11 00 01 10 -> 0b10'01'00'11

  const std::vector<uint8_t> c8 = {0x11, 0x22, 0x33, 0x44, 0x55};
  std::vector<uint32_t> w8(2);
  pack_bits(c8.data(), 5, 8, w8.data());
  EXPECT_EQ(w8[0], 0x44332211u);
  EXPECT_EQ(w8[1], 0x55u);
}

TEST(BitPack, RejectsBadWidth) {
  uint8_t c = 0;
  uint32_t w = 0;
  EXPECT_THROW(pack_bits(&c, 1, 1, &w), std::invalid_argument);
  EXPECT_THROW(pack_bits(&c, 1, 9, &w), std::invalid_argument);
  EXPECT_THROW(unpack_bits(&w, 1, 0, &c), std::invalid_argument);
  EXPECT_THROW(unpack_bits(&w, -1, 4, &c), std::invalid_argument);
  EXPECT_NO_THROW(pack_bits(&c, 0, 4, &w));
}

}  // namespace
