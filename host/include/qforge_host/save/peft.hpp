// PEFT LoRA adapters (Hugging Face peft's on-disk layout), the file format of
// "peft.lora/1" adapters: written beside a quantized checkpoint, which is
// what vLLM serves on a GPTQ or compressed-tensors base, and read back onto a
// model for `eval`/`generate --adapter` and `--merge`.
//
// A directory holding
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "target_modules",
//                               "rank_pattern", "alpha_pattern", "use_rslora", ...}
//   adapter_model.safetensors  "base_model.model.<layer>.lora_A.weight" [r, in],
//                              "base_model.model.<layer>.lora_B.weight" [out, r]
// and y = W x + s·B·A·x with s = lora_alpha / r (lora_alpha / √r with use_rslora).
#pragma once

#include <string>
#include <vector>

#include "qforge_host/model/model.hpp"
#include "qforge_host/train/postprocess.hpp"

namespace qforge::host {

// Writes `adapters` (every one of format "peft.lora/1") as a PEFT adapter
// directory `dir`, replacing one that is there; the directory appears
// complete or not at all. `base_model` goes to base_model_name_or_path.
void write_peft_adapter(const std::string& dir, const std::vector<AdapterExport>& adapters,
                        const std::string& base_model);

// Reads the PEFT adapter in `dir`, checking every field and tensor against
// `model` (names, shapes, finite values), and sets each named linear's
// adapter. Throws UsageError/ModelFileError naming the file.
void apply_peft_adapter(Model& model, const std::string& dir);

// Turns exported "peft.lora/1" adapters into the model's own adapters (what
// apply_peft_adapter would read back from their files).
void apply_adapters(Model& model, const std::vector<AdapterExport>& adapters);

// Folds every linear's adapter into its weight: the layer becomes dense
// (its dequantized weight + ΔW, in the model's dtype). UsageError for an
// adapter that cannot be folded.
void merge_adapters(Model& model);

}  // namespace qforge::host
