#include <qforge_kernels/bitpack.hpp>

#include <stdexcept>
#include <string>

namespace qforge::kernels {
namespace {

void check_args(int64_t n, int bits, const char* fn) {
  if (bits < kMinPackBits || bits > kMaxPackBits)
    throw std::invalid_argument(std::string(fn) + ": bits must be in [2, 8], got " +
                                std::to_string(bits));
  if (n < 0) throw std::invalid_argument(std::string(fn) + ": negative code count");
}

// A 64-bit accumulator holds the partial word; with bits <= 8 it never holds
// more than 31 + 8 bits. Templated on the width so the shifts and masks are
// constants and the compiler can unroll.
template <int B>
void pack_impl(const uint8_t* codes, int64_t n, uint32_t* words) {
  constexpr uint64_t mask = (uint64_t{1} << B) - 1;
  uint64_t acc = 0;
  int fill = 0;
  for (int64_t i = 0; i < n; ++i) {
    acc |= (codes[i] & mask) << fill;
    fill += B;
    if (fill >= 32) {
      *words++ = static_cast<uint32_t>(acc);
      acc >>= 32;
      fill -= 32;
    }
  }
  if (fill > 0) *words = static_cast<uint32_t>(acc);
}

template <int B>
void unpack_impl(const uint32_t* words, int64_t n, uint8_t* codes) {
  constexpr uint64_t mask = (uint64_t{1} << B) - 1;
  uint64_t acc = 0;
  int avail = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (avail < B) {  // reads a word only when code i needs it: never past the end
      acc |= static_cast<uint64_t>(*words++) << avail;
      avail += 32;
    }
    codes[i] = static_cast<uint8_t>(acc & mask);
    acc >>= B;
    avail -= B;
  }
}

}  // namespace

void pack_bits(const uint8_t* codes, int64_t n, int bits, uint32_t* words) {
  check_args(n, bits, "pack_bits");
  switch (bits) {
    case 2: return pack_impl<2>(codes, n, words);
    case 3: return pack_impl<3>(codes, n, words);
    case 4: return pack_impl<4>(codes, n, words);
    case 5: return pack_impl<5>(codes, n, words);
    case 6: return pack_impl<6>(codes, n, words);
    case 7: return pack_impl<7>(codes, n, words);
    default: return pack_impl<8>(codes, n, words);
  }
}

void unpack_bits(const uint32_t* words, int64_t n, int bits, uint8_t* codes) {
  check_args(n, bits, "unpack_bits");
  switch (bits) {
    case 2: return unpack_impl<2>(words, n, codes);
    case 3: return unpack_impl<3>(words, n, codes);
    case 4: return unpack_impl<4>(words, n, codes);
    case 5: return unpack_impl<5>(words, n, codes);
    case 6: return unpack_impl<6>(words, n, codes);
    case 7: return unpack_impl<7>(words, n, codes);
    default: return unpack_impl<8>(words, n, codes);
  }
}

}  // namespace qforge::kernels
