// Quantized checkpoints on disk (DESIGN.md "Save / load"): writing a
// quantized model directory block by block, and reading one back.
//
// Formats written (`--save-format`):
//   dequantized  every weight as float16 safetensors (quantized layers hold
//                their dequantized weights): any Llama loader reads it.
//   gptq         the AutoGPTQ v1 ("gptq" checkpoint_format) layout that
//                transformers, vLLM and GPTQModel load: each quantized linear
//                as <name>.qweight / .qzeros / .scales / .g_idx (/ .bias),
//                everything else float16, `quantization_config` in
//                config.json and a quantize_config.json beside it. Needs every
//                linear of every block quantized into the packed format
//                "org.qforge.gptq/1" (whichever plugin writes it).
// Both are sharded safetensors (one shard per block plus model-rest) with a
// model.safetensors.index.json written last, and carry the tokenizer files.
//
// Read back: a directory whose config.json has a GPTQ quantization_config
// (v1 "gptq" checkpoint_format) is loaded with each packed linear run by the
// loaded inference layer that consumes "org.qforge.gptq/1".
#pragma once

#include <ATen/Tensor.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model.hpp"
#include "quantize.hpp"
#include "registry.hpp"

namespace qforge::host {

class TensorStore;

enum class SaveFormat { dequantized, gptq };
SaveFormat parse_save_format(const std::string& name);  // throws UsageError
const char* save_format_name(SaveFormat f);

// The packed format a GPTQ checkpoint's layers are read and written in.
inline constexpr const char* kGptqPackedFormat = "org.qforge.gptq/1";

// Writes `text` to `path` through a temporary file and a rename.
void write_text_atomic(const std::filesystem::path& path, const std::string& text);

// Writes a quantized model directory: write_block() per block (each shard is
// complete on its own, so a run can checkpoint after each), then finish().
class CheckpointWriter {
 public:
  CheckpointWriter(SaveFormat format, std::string model_dir, std::filesystem::path out_dir,
                   const TensorStore& store, int64_t num_layers);

  // Refuses, before any work, a plan the format cannot hold: none of
  // `formats` (those the layers may come in) is the format's packed layout,
  // or a block linear is missing from `selected`.
  void check_plan(const std::vector<std::string>& formats,
                  const std::vector<std::string>& selected) const;

  // Shard of block `i`: its norms, and each linear as its current weight
  // (dequantized) or as the packed tensors of its result (gptq; refused as
  // soon as a layer's setting differs from the layers written before).
  void write_block(size_t i, const Block& block,
                   const std::map<std::string, const QuantResult*>& results);

  // Side files, config.json (+ quantize_config.json), the non-block tensors,
  // and last the index. `layer_formats_metadata`: (packed format, metadata)
  // of every quantized layer.
  void finish(const std::vector<std::pair<std::string, std::string>>& layer_formats_metadata) const;

  static std::string shard_name(size_t i);

 private:
  SaveFormat format_;
  std::string model_dir_;
  std::filesystem::path out_;
  const TensorStore& store_;
  int64_t num_layers_;
  std::vector<std::pair<std::string, std::string>> seen_;  // gptq: layers written
};

// For a model directory whose config.json has a quantization_config: a loader
// that builds each packed linear through `registry` (which must be loaded).
// Returns an empty function for an unquantized model; throws UsageError for a
// quantization_config qforge cannot read (another quant_method, gptq_v2, ...).
LinearLoader packed_linear_loader(const Registry& registry, const std::string& model_dir);

// Model::load with packed_linear_loader.
Model load_model(const Registry& registry, const std::string& dir, at::ScalarType dtype,
                 bool with_blocks = true);

}  // namespace qforge::host
