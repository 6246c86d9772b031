// The rows of the affine format table (kernels/src/affine_format.cpp), one
// file each.
#pragma once

#include <qforge_kernels/affine_format.hpp>

namespace qforge::kernels::formats {

extern const AffineFormat rtn_v1;   // rtn_v1.cpp, sdk/include/qforge/formats/rtn_v1.h
extern const AffineFormat gptq_v1;  // gptq_v1.cpp, sdk/include/qforge/formats/gptq_v1.h

}  // namespace qforge::kernels::formats
