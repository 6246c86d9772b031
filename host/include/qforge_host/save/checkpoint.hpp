// Writing a quantized model directory block by block in any SaveFormat, and
// reading one back.
//
// Every format is sharded safetensors (one shard per block, written as the
// block finishes, plus model-rest), with the tokenizer files, config.json
// (+ the format's side files) and model.safetensors.index.json written last,
// so an interrupted run never leaves a directory that looks complete. Every
// dense floating tensor is float16 (a value beyond float16's range is an
// error); a quantized linear's packed tensors are stored as its format's
// packed_linear returns them.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "qforge_host/base/dir_lock.hpp"
#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/pipeline/pipeline.hpp"
#include "qforge_host/save/save_format.hpp"

namespace qforge::host {

struct WriterOptions {
  bool resume = false;  // a checkpointed run's shards in the directory are its own
  bool force = false;   // delete model files this run did not write instead of refusing
  std::string holder = "qforge";  // who holds the directory's lock, for other runs' messages
};

// Holds the output directory's lock (base/dir_lock.hpp) from construction to
// destruction, so one run at a time writes there. Refuses, before any work,
// a directory holding a finished model, or model files (*.safetensors, *.bin,
// an index) that this run would not write and that a loader could pick up
// instead of its output; WriterOptions::force deletes them instead.
class CheckpointWriter final : public BlockSink {
 public:
  CheckpointWriter(std::unique_ptr<SaveFormat> format, std::string model_dir,
                   std::filesystem::path out_dir, const WriterOptions& options = {});

  std::string name() const override { return format_->name(); }
  void check_plan(const std::vector<std::string>& formats,
                  const std::vector<std::string>& selected) const override;
  std::vector<std::string> write_block(
      size_t i, const Block& block, const std::map<std::string, const QuantResult*>& results) override;
  void restore_block(size_t i, const std::map<std::string, const QuantResult*>& results) override;
  void finish(const std::vector<LayerReport>& layers) override;

  static std::string shard_name(size_t i);

 private:
  // The tensors of every block shard (headers only), sorted.
  std::vector<std::string> block_tensor_names() const;
  std::unique_ptr<SaveFormat> format_;
  std::string model_dir_;
  std::filesystem::path out_;
  DirLock lock_;
  TensorStore store_;
  ModelConfig config_;
};

// Whether the model directory's config.json declares a quantization_config,
// i.e. loading it needs the plugins' inference layers (an unquantized model
// loads without any plugin, so a broken plugin cannot stop its evaluation).
bool declares_quantization(const std::string& model_dir);

// For a model directory whose config.json has a quantization_config: a loader
// that builds each packed linear through `registry` (which must be loaded).
// Returns an empty function for an unquantized model; throws UsageError for a
// quantization_config qforge cannot read.
LinearLoader packed_linear_loader(const Registry& registry, const std::string& model_dir);

// Writes tuned packed linears (results in the formats the checkpoint at `dir`
// loaded them in) back into its files: the checkpoint's own save format maps
// each result to the tensors it stores, each of which must already be there
// with the same dtype and shape (UsageError naming it otherwise, before
// anything is written); every shard holding one is rewritten under a
// temporary name and renamed over the old one. config.json and the index
// stay as they are.
void store_tuned_layers(const std::string& dir, const std::map<std::string, QuantResult>& results);

// Model::load with packed_linear_loader.
Model load_model(const Registry& registry, const std::string& dir, at::ScalarType dtype,
                 bool with_blocks = true);

// Floating tensors as float16 (others as they are, contiguous); a value beyond
// float16's range is an error.
at::Tensor to_half(const std::string& name, const at::Tensor& t);

}  // namespace qforge::host
