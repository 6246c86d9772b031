// Host-side errors and their exit codes.
#pragma once

#include <stdexcept>
#include <string>

namespace qforge::host {

// Bad usage or bad input: the CLI exits with 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure reported by a plugin through a status (code kept).
class PluginError : public std::runtime_error {
 public:
  PluginError(int32_t code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  int32_t code() const noexcept { return code_; }

 private:
  int32_t code_;
};

enum ExitCode : int { kExitOk = 0, kExitInternal = 1, kExitUsage = 2 };

}  // namespace qforge::host
