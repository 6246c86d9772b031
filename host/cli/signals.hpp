// How the CLI answers signals.
//
// - A crash (SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL) inside a plugin names
//   the component and layer, then the process dies the way it would have.
// - A plugin calling exit() while it runs is reported and exits 1, never 0.
// - Ctrl-C kills at once, except inside an InterruptScope (the quantize
//   pipeline), where the first one asks the work to stop after the current
//   layer (well-behaved plugins poll is_cancelled and stop sooner); if a
//   plugin has not returned kGraceSeconds later, or on a second Ctrl-C, the
//   process stops at once. Either way it exits 130 and the checkpoint is
//   consistent (finished blocks are kept for --resume).
#pragma once

namespace qforge::cli {

constexpr unsigned kGraceSeconds = 10;

// Installs the crash and exit() reports; call once at start.
void install_signal_reports();

// Ctrl-C as a request to stop, for the scope's lifetime.
class InterruptScope {
 public:
  InterruptScope();
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;
};

}  // namespace qforge::cli
