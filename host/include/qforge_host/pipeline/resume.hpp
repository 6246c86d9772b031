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
#include <map>
#include <string>
#include <vector>

#include "qforge_host/pipeline/options.hpp"

namespace qforge::host {

// Everything the result depends on, as text: the options, and the identity
// of the inputs (the model's files by size, time and a digest of their ends,
// the calibration file and the quantizer's plugin library by content). A
// checkpoint made with other options or other inputs is refused.
std::string options_fingerprint(const QuantizeOptions& options, const std::string& save_format,
                                const std::string& plugin_library);

struct ResumeState {
  int64_t next_block = 0;
  std::string calibration;  // the description of the calibration data used
  at::Tensor x, x_fp;       // next block's inputs: quantized and (QEP) full-precision streams
  // Every file the run has checkpointed so far (shards, results, activations)
  // with its digest at the time; checked again on resume.
  std::map<std::string, std::string> files;
};

class RunCheckpoint {
 public:
  explicit RunCheckpoint(const std::filesystem::path& out_dir);
  const std::filesystem::path& dir() const { return dir_; }
  bool exists() const;
  // The saved state; throws UsageError when it was made with other options or
  // inputs, or when a checkpointed file changed since it was written.
  ResumeState load(const std::string& fingerprint, at::ScalarType act_dtype) const;
  std::string results_path(int64_t block) const;
  // The adapters block post-processes attached to block `block`.
  std::string adapters_path(int64_t block) const;
  // After block `state.next_block - 1`: activations, then the state file,
  // recording the digests of `written` (the block's files) and the activations.
  void save(ResumeState& state, const std::string& fingerprint,
            const std::vector<std::string>& written) const;
  void remove() const;
  // The plugin call (component and layer) that was running when the previous
  // run into this directory died, or "" when it did not die inside a plugin.
  std::string last_activity() const;
  std::filesystem::path activity_path() const { return dir_ / "running"; }

 private:
  std::filesystem::path dir_;
};

// Records each plugin call in `file` while alive (record_plugin_activity_in),
// for RunCheckpoint::last_activity() of the next run.
class ActivityRecord {
 public:
  explicit ActivityRecord(const std::filesystem::path& file);
  ~ActivityRecord();
  ActivityRecord(const ActivityRecord&) = delete;
  ActivityRecord& operator=(const ActivityRecord&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace qforge::host
