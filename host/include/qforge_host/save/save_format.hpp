// Checkpoint file formats (DESIGN.md "Save / load"): one file per format
// behind this small interface, found by name in one table (save_format.cpp).
// The host knows file formats here, never a method: a format says which
// packed formats it can store and how.
#pragma once

#include <ATen/Tensor.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "qforge_host/model/config.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/pipeline/results_file.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/registry.hpp"

namespace qforge::host {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class SaveFormat {
 public:
  virtual ~SaveFormat() = default;
  // The --save-format value, e.g. "gptq".
  virtual std::string name() const = 0;
  // Before any work: refuses (UsageError) a plan the format cannot hold.
  // `formats`: packed formats the quantized layers may come in; `selected`:
  // the quantized linears.
  virtual void check_plan(const std::vector<std::string>& formats,
                          const std::vector<std::string>& selected,
                          const ModelConfig& config) const;
  // The tensors storing quantized linear `layer` (named "<layer>.<tensor>"),
  // or an empty list to store its dequantized weight. They are stored as
  // returned, dtype included (the writer turns only dense tensors into
  // float16): a format converts what its layout wants converted. Refuses
  // (UsageError) a result the format cannot hold, before anything of its
  // block is written.
  virtual NamedTensors packed_linear(const std::string& layer, const QuantResult& result) = 0;
  // config.json's "quantization_config" (null: none) for the quantized layers.
  // `stored`: the names of the tensors in the block shards, sorted, those a
  // resumed run's earlier process wrote included (packed_linear was not
  // called for them in this process).
  virtual nlohmann::ordered_json quantization_config(const std::vector<LayerReport>& layers,
                                                     const ModelConfig& config,
                                                     const std::vector<std::string>& stored) const;
  // Files written beside config.json (name, text), given that config.
  virtual std::vector<std::pair<std::string, std::string>> side_files(
      const nlohmann::ordered_json& quantization_config) const;
};

// The format named `name`; UsageError listing the names when there is none.
std::unique_ptr<SaveFormat> make_save_format(const std::string& name);
// "dequantized, gptq, ..."
std::string save_format_names();

// Reading quantized checkpoints back: a reader per quantization_config
// "quant_method", giving each packed linear to the loaded inference layer of
// its packed format.
struct CheckpointReader {
  const char* quant_method;
  const char* save_format;  // the SaveFormat that writes this layout
  // A loader for the checkpoint at `model_dir` whose quantization_config is
  // `config` (`where` names it in messages). Throws UsageError for what it
  // cannot read.
  LinearLoader (*loader)(const Registry& registry, const std::string& model_dir,
                         const nlohmann::json& config, const std::string& where);
};
const std::vector<CheckpointReader>& checkpoint_readers();

// Turns `result` into a packed layer for `linear` through the loaded
// inference layer of its format, checking its shape against [out, in].
void attach_packed(const Registry& registry, const std::string& model_dir, Linear& linear,
                   const QuantResult& result, int64_t out, int64_t in);

// Helpers for formats reading JSON metadata (messages name `where`).
int64_t json_int(const nlohmann::json& m, const char* key, const std::string& where);
bool json_bool(const nlohmann::json& m, const char* key, bool fallback, const std::string& where);

}  // namespace qforge::host
