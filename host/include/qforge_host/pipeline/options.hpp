// What `qforge quantize` asks of the pipeline.
#pragma once

#include <ATen/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "qforge_host/data/calibration.hpp"
#include "qforge_host/pipeline/selection.hpp"

namespace qforge::host {

// A component the pipeline runs on every block, with its parameters.
struct ComponentRun {
  std::string id;
  std::map<std::string, std::string> params;
};

struct QuantizeOptions {
  std::string model_dir;
  std::string out_dir;
  std::string method;                           // quantizer component id
  std::map<std::string, std::string> params;    // --set
  std::vector<LayerOverride> overrides;         // per-layer parameter overrides
  LayerSelection selection;
  CalibrationOptions calibration;
  bool qep = false;
  double qep_percdamp = 0.01;   // dampening of H, as a fraction of mean(diag H)
  double qep_perccorr = 0.5;    // fraction of the QEP correction applied
  bool resume = false;
  int64_t chunk = 4;            // calibration sequences per forward pass
  at::ScalarType act_dtype = at::kFloat;  // storage of calibration activations
  // Pre-processes (ABI 1.2), in order, on each block before its linears are
  // quantized; post-processes with a per-block hook (run_block), in order,
  // after they are and before the block's output feeds the next one.
  std::vector<ComponentRun> preprocesses;
  std::vector<ComponentRun> block_postprocesses;
};

}  // namespace qforge::host
