// File identities for --resume (a checkpoint made from other inputs, or a
// checkpointed file changed since it was written, is refused) and for caches
// keyed by content.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace qforge::host {

// FNV-1a (64-bit) of the whole file with its size, e.g. "1234:9f3a…" (hex).
// Throws IoError when it cannot be read.
std::string file_digest(const std::string& path);

// A cheap identity for large inputs (model weights): size, modification time
// and FNV-1a of the first and last MiB (a safetensors header sits in the
// first), e.g. "1234:1700000000123:9f3a…".
std::string file_identity(const std::string& path);

// FNV-1a (64-bit) of a text, in hex.
std::string text_digest(std::string_view text);

// The identity of a model directory's files, by name: config.json and the
// tokenizer files by digest, the weights (*.safetensors, the index) by
// file_identity.
std::map<std::string, std::string> model_files_identity(const std::string& dir);

}  // namespace qforge::host
