// The block-sequential quantization pipeline (DESIGN.md "Pipeline").
//
// Block by block: capture the block's inputs for the calibration samples,
// accumulate each linear's Hessian H = 2/n XᵀX in float32 (capture.hpp),
// quantize the block's layers in true-sequential order (the stages of the
// architecture's BlockLayout; layers of one stage share one Hessian) through
// the quantizer plugin, put the dequantized weights in place, and run the
// quantized block to produce the next block's inputs. With QEP (qep.hpp) the
// full-precision stream runs beside the quantized one. Each finished block
// goes to a BlockSink (the save stage writes it) and is checkpointed
// (resume.hpp).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/options.hpp"
#include "qforge_host/pipeline/results_file.hpp"
#include "qforge_host/plugins/registry.hpp"
#include "qforge_host/train/postprocess.hpp"

namespace qforge::host {

// Where finished blocks go. The save stage implements it for each file
// format; the pipeline knows none.
class BlockSink {
 public:
  virtual ~BlockSink() = default;
  // The format's name (part of the resume fingerprint).
  virtual std::string name() const = 0;
  // Before any work: refuses (UsageError) a plan the sink cannot hold.
  // `formats`: the packed formats the layers may come in; `selected`: the
  // linears to be quantized.
  virtual void check_plan(const std::vector<std::string>& formats,
                          const std::vector<std::string>& selected) const = 0;
  // Block `i` is final: its norms, its linears (dense ones hold their
  // current weight) and the packed results of its quantized linears. Returns
  // the files written (a resumed run checks they are unchanged).
  virtual std::vector<std::string> write_block(
      size_t i, const Block& block, const std::map<std::string, const QuantResult*>& results) = 0;
  // A resumed run: block `i` was written by an earlier run, with these packed
  // results (from the checkpoint); the sink takes back what it learned then
  // (e.g. the per-layer settings its config lists). Nothing is written.
  virtual void restore_block(size_t i, const std::map<std::string, const QuantResult*>& results) = 0;
  // Everything else, once every block is written.
  virtual void finish(const std::vector<LayerReport>& layers) = 0;
};

struct QuantizeSummary {
  // The adapters block post-processes attached, every block's in order
  // (saved by the caller, e.g. as a PEFT adapter).
  std::vector<AdapterExport> adapters;
  std::string calibration;              // what calibration data was used
  std::vector<LayerReport> layers;
  int64_t resumed_from_block = 0;       // 0 when started afresh
  std::string results_file;
};

// Throws UsageError for bad options (before any work), PluginError, and
// Cancelled on Ctrl-C (the checkpoint is usable with options.resume).
QuantizeSummary quantize_model(const Registry& registry, const QuantizeOptions& options,
                               BlockSink& sink);

}  // namespace qforge::host
