// The rows of the save-format and reader tables (save_format.cpp); one file
// per format defines its row.
#pragma once

#include <memory>

#include <qforge_kernels/affine_aten.hpp>

#include "qforge_host/save/save_format.hpp"

namespace qforge::host {

std::unique_ptr<SaveFormat> make_dequantized_format();   // dequantized.cpp
std::unique_ptr<SaveFormat> make_gptq_v1_format();       // gptq_v1.cpp
extern const CheckpointReader kGptqV1Reader;             // gptq_v1.cpp
std::unique_ptr<SaveFormat> make_compressed_tensors_format();  // compressed_tensors.cpp
extern const CheckpointReader kCompressedTensorsReader;        // compressed_tensors.cpp
std::unique_ptr<SaveFormat> make_native_format();  // native.cpp
extern const CheckpointReader kNativeReader;       // native.cpp
std::unique_ptr<SaveFormat> make_quip_format();    // native.cpp (its layout)
extern const CheckpointReader kQuipReader;         // native.cpp
std::unique_ptr<SaveFormat> make_dbf_format();     // dbf.cpp
extern const CheckpointReader kDbfReader;          // dbf.cpp

// Whether an affine result `a` (decoded from `r`) is on a symmetric grid: the
// producer's "sym" claim when its metadata makes one, else the data's (every
// zero point 2^(bits − 1)). save_format.cpp.
bool affine_symmetric(const QuantResult& r, const kernels::AffineTensors& a);

}  // namespace qforge::host
