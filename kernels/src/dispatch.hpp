// Internal: the kernel table of an instruction set, for the non-ISA
// translation units (packed_matrix.cpp, sign_chain.cpp, fp8.cpp, sparse24.cpp).
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernel_args.hpp"

namespace qforge::kernels::detail {

// Throws std::invalid_argument when `isa` is not supported here.
const KernelTable& kernels_for(Isa isa);

// A kernel family's table for `isa`, among the tables of its per-ISA
// translation units (QFORGE_ISA_TABLES: null where the build has none).
// Throws std::invalid_argument when the machine or the build lacks `isa`.
template <class Table>
const Table& table_for(Isa isa, const Table* portable, const std::common_type_t<Table>* avx2,
                       const std::common_type_t<Table>* avx512) {
  const Table* t = !isa_supported(isa)       ? nullptr
                   : isa == Isa::kPortable ? portable
                   : isa == Isa::kAvx2     ? avx2
                   : isa == Isa::kAvx512   ? avx512
                                           : nullptr;
  if (t == nullptr)
    throw std::invalid_argument(std::string("instruction set ") + isa_name(isa) +
                                " is not supported on this machine or build");
  return *t;
}

}  // namespace qforge::kernels::detail

// The arguments of table_for for the family `name` (detail::<name>_portable_kernels() ...).
#if defined(QFORGE_KERNELS_X86)
#define QFORGE_ISA_TABLES(name) \
  detail::name##_portable_kernels(), detail::name##_avx2_kernels(), detail::name##_avx512_kernels()
#else
#define QFORGE_ISA_TABLES(name) detail::name##_portable_kernels(), nullptr, nullptr
#endif
