// The rows of the affine format table (kernels/src/affine_format.cpp) and of
// the sign format table (kernels/src/sign_format.cpp), one file each.
#pragma once

#include <qforge_kernels/affine_format.hpp>
#include <qforge_kernels/sign_format.hpp>

namespace qforge::kernels::formats {

// Points a.weight at `codes` (word w of output o at codes[w * word_stride +
// o * out_stride]) and at a.scales / a.zeros, both float32 [groups, out];
// the group of input i is g_idx[i], or i / group_size when g_idx is null.
void point_weight(AffineWeight& a, const AffineShape& s, const uint32_t* codes,
                  int64_t word_stride, int64_t out_stride, const int32_t* g_idx);

extern const AffineFormat rtn_v1;   // rtn_v1.cpp, sdk/include/qforge/formats/rtn_v1.h
extern const AffineFormat gptq_v1;  // gptq_v1.cpp, sdk/include/qforge/formats/gptq_v1.h
extern const AffineFormat ct_pack_quantized_v1;  // ct_pack_quantized_v1.cpp, formats/ct_pack_quantized_v1.h

extern const AffineFormat quip_v1;  // quip_v1.cpp, formats/quip_v1.h (with transforms)
extern const SignFormat dbf_v1;  // dbf_v1.cpp, sdk/include/qforge/formats/dbf_v1.h (sign_format.hpp's table)

}  // namespace qforge::kernels::formats
