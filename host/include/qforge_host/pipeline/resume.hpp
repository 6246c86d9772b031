// The pipeline's checkpoint: <out>/.qforge-checkpoint holds, after each
// finished block, that block's results file, the next block's input
// activations and last a state file (next block, options fingerprint), each
// written atomically, so a killed run resumes from the last finished block.
//
// Guarantee: a resumed run writes the same bytes as an uninterrupted one on
// the same machine (same ISA paths, same thread count): every operation
// after the restart sees exactly the inputs it would have seen. Across
// machines (AVX2 vs AVX-512, another BLAS) results agree within float32
// rounding, not bit for bit.
#pragma once

#include <ATen/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "qforge_host/pipeline/options.hpp"

namespace qforge::host {

// Everything the result depends on, as text; a checkpoint made with other
// options is refused.
std::string options_fingerprint(const QuantizeOptions& options, const std::string& save_format);

struct ResumeState {
  int64_t next_block = 0;
  std::string calibration;  // the description of the calibration data used
  at::Tensor x, x_fp;       // next block's inputs: quantized and (QEP) full-precision streams
};

class RunCheckpoint {
 public:
  explicit RunCheckpoint(const std::filesystem::path& out_dir);
  const std::filesystem::path& dir() const { return dir_; }
  bool exists() const;
  // The saved state; throws UsageError when it was made with other options.
  ResumeState load(const std::string& fingerprint, at::ScalarType act_dtype) const;
  std::string results_path(int64_t block) const;
  // After block `state.next_block - 1`: activations, then the state file.
  void save(const ResumeState& state, const std::string& fingerprint) const;
  void remove() const;

 private:
  std::filesystem::path dir_;
};

}  // namespace qforge::host
