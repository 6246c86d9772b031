// Post-processes (DESIGN.md "Post-processes and training"): the model as a
// post-process sees it (qforge_model_services) and the training extension
// "qforge.host.train" (sdk/include/qforge/ext/train.h).
//
// The host owns the mechanics: autograd over its own model (a packed linear
// is a frozen node whose backward is its inference layer's backward_input; a
// plugin's adapter is a node whose backward is the adapter's), the losses,
// AdamW, clipping, the schedule, the teacher, the batches and the training
// checkpoints. The plugin owns the policy.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <qforge/ext/train.h>

#include "qforge_host/data/calibration.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qforge::host {

class Tokenizer;

// What a post-process run needs beyond the model.
struct PostprocessContext {
  const Tokenizer* tokenizer = nullptr;  // the model's (training data)
  std::string teacher_dir;               // the unquantized model; "" when none was given
  CalibrationOptions data;               // the training file (file, format, text_field)
  std::string state_dir;                 // where training checkpoints go; "" keeps none
  bool resume = false;                   // continue from a checkpoint in state_dir
  std::string identity;                  // what a checkpoint must have been made by
};

// An attached adapter, as saved: its file format ("peft.lora/1"), metadata
// and trainable tensors (copies).
struct AdapterExport {
  std::string layer;  // e.g. "model.layers.0.self_attn.q_proj"
  std::string format;
  std::string metadata;  // JSON object
  std::vector<std::pair<std::string, at::Tensor>> params;
};

// The block a post-process's run_block reconstructs inside the pipeline:
// its calibration inputs (the quantized stream) and the unquantized block's
// outputs on them.
struct BlockScope {
  size_t block = 0;
  at::Tensor inputs, targets;  // [n, T, hidden]
  // For pre-processes (qforge_model_services.input_stats): the statistics
  // [3, in] (min, max, mean |x| per channel) of the inputs of the block's
  // linear named `probe` over the calibration inputs, the block as it is now.
  // Empty when there are none.
  std::function<at::Tensor(const std::string& probe)> input_stats;
  // (qforge_model_services.input_gram): (1/n) Σ x xᵀ [in, in] of the same
  // inputs. Empty when there are none.
  std::function<at::Tensor(const std::string& probe)> input_gram;
};

class ModelServices {
 public:
  // `model` must outlive this object, with every block loaded, or with a
  // `scope`, block scope->block (the services then hold its linears only).
  // Its packed linears become differentiable for as long as this object lives.
  ModelServices(Model& model, PostprocessContext context, const BlockScope* scope = nullptr);
  ~ModelServices();  // detaches and destroys the adapters
  ModelServices(const ModelServices&) = delete;
  ModelServices& operator=(const ModelServices&) = delete;

  const qforge_model_services* table() const;
  // The adapters attached so far, in layer order. Throws UsageError for one
  // that has no export format.
  std::vector<AdapterExport> export_adapters() const;
  // The packed linears whose tunable parameters a trainer tuned, in order.
  std::vector<std::string> tuned_layers() const;
  // The parameters set_parameter replaced, in order first written, with
  // copies of their values now.
  std::vector<std::pair<std::string, at::Tensor>> written_parameters() const;

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Runs post-process `component` with validated `params` on `model`. Throws
// PluginError, Cancelled (Ctrl-C; the training checkpoint is kept) or
// UsageError.
void run_postprocess(const Component& component, const ParamValues& params, ModelServices& model);

// Exported adapters in one safetensors file (tensors "<layer>/<param>", each
// adapter's format and metadata in the header), and back; ModelFileError
// naming the file for one qforge did not write.
void save_adapter_exports(const std::string& path, const std::vector<AdapterExport>& adapters);
std::vector<AdapterExport> load_adapter_exports(const std::string& path);

// Runs pre-process `component` (ABI 1.2) on the block `model` was made for
// (a BlockScope). Throws PluginError, UsageError, Cancelled.
void run_preprocess_block(const Component& component, const ParamValues& params,
                          ModelServices& model);

// Whether the post-process has the per-block hook (ABI 1.1 run_block).
bool has_run_block(const Component& component);
// Calls it for the block `model` was made for (a BlockScope).
void run_postprocess_block(const Component& component, const ParamValues& params,
                           ModelServices& model);

// The host's qforge.host.train table (revision 1).
const qforge_host_train* host_train_table();

}  // namespace qforge::host
