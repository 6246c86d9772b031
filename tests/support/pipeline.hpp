// The pipeline and save stages wired together as the CLI does: a run, or
// saved results applied, written to a directory in a named save format.
#pragma once

#include <string>

#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/results/apply.hpp"
#include "qforge_host/save/checkpoint.hpp"

namespace qforge::test {

inline host::QuantizeSummary quantize(const host::Registry& registry,
                                      const host::QuantizeOptions& o,
                                      const std::string& format = "dequantized") {
  host::CheckpointWriter writer(host::make_save_format(format), o.model_dir, o.out_dir);
  return host::quantize_model(registry, o, writer);
}

inline void apply(const host::Registry& registry, const std::string& model_dir,
                  const std::string& results, const std::string& out_dir,
                  const std::string& format = "dequantized") {
  host::CheckpointWriter writer(host::make_save_format(format), model_dir, out_dir);
  host::apply_results(registry, model_dir, results, writer);
}

}  // namespace qforge::test
