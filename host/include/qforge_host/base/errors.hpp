// The host's one error vocabulary and the exit codes the CLI maps it to.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace qforge::host {

// Bad usage or bad input: the CLI exits with 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad model or checkpoint file: names the file and, when relevant, the
// tensor. A UsageError (exit 2): the input is at fault.
class ModelFileError : public UsageError {
 public:
  using UsageError::UsageError;
};

// Reading or writing failed for a reason other than the input's content
// (a full disk, permissions): exit 1.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The user asked to stop (Ctrl-C), between layers or inside a plugin (which
// returned QFORGE_STATUS_CANCELLED): exit 130; a checkpoint is kept.
class Cancelled : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure reported by a plugin through a status (code kept). A plugin's
// QFORGE_STATUS_CANCELLED is thrown as Cancelled instead.
class PluginError : public std::runtime_error {
 public:
  PluginError(int32_t code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

enum ExitCode : int { kExitOk = 0, kExitInternal = 1, kExitUsage = 2, kExitCancelled = 130 };

}  // namespace qforge::host
