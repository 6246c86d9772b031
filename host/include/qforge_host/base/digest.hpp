// File identities for --resume: a checkpoint made from other inputs, or a
// checkpointed file changed since it was written, is refused.
#pragma once

#include <cstdint>
#include <string>

namespace qforge::host {

// FNV-1a (64-bit) of the whole file with its size, e.g. "1234:9f3a…" (hex).
// Throws IoError when it cannot be read.
std::string file_digest(const std::string& path);

// A cheap identity for large inputs (model weights): size, modification time
// and FNV-1a of the first and last MiB (a safetensors header sits in the
// first), e.g. "1234:1700000000123:9f3a…".
std::string file_identity(const std::string& path);

}  // namespace qforge::host
