// Internal: the kernel table of an instruction set, for the non-ISA
// translation units (packed_matrix.cpp, sign_chain.cpp).
#pragma once

#include <qforge_kernels/packed_matrix.hpp>

#include "kernel_args.hpp"

namespace qforge::kernels::detail {

// Throws std::invalid_argument when `isa` is not supported here.
const KernelTable& kernels_for(Isa isa);

}  // namespace qforge::kernels::detail
