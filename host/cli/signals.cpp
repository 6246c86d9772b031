// Signal handling of the CLI; see signals.hpp. Every handler is
// async-signal-safe: write(2), alarm(2), signal(2), raise(3) only.
#include "signals.hpp"

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <cstring>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/plugins/services.hpp"

namespace qforge::cli {
namespace {

void write_stderr(const char* a, const char* b = "", const char* c = "") {
  for (const char* t : {a, b, c}) {
    const size_t n = std::strlen(t);
    if (n > 0) [[maybe_unused]] ssize_t w = ::write(STDERR_FILENO, t, n);
  }
}

void stop_now() {
  std::signal(SIGINT, SIG_DFL);
  std::raise(SIGINT);  // exit status 130, as for any program stopped by Ctrl-C
}

void on_sigint(int) {
  if (host::cancel_requested()) {
    write_stderr("\nqforge: stopped at once; finished blocks are checkpointed (--resume)\n");
    stop_now();
    return;
  }
  host::request_cancel();
  write_stderr("\nqforge: stopping after the current layer (Ctrl-C again to stop at once)\n");
  alarm(kGraceSeconds);
}

// The grace period after the first Ctrl-C is over.
void on_alarm(int) {
  const char* activity = host::current_plugin_activity();
  if (*activity == '\0') return;  // between layers: the pipeline is stopping by itself
  write_stderr("qforge: ", activity,
               " did not stop after Ctrl-C; stopped at once; finished blocks are checkpointed "
               "(--resume)\n");
  stop_now();
}

void on_fatal_signal(int sig) {
  const char* activity = host::current_plugin_activity();
  if (*activity != '\0')
    write_stderr("qforge: crashed in ", activity,
                 "; finished blocks are checkpointed: fix or remove the plugin, then --resume\n");
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void on_exit_during_plugin() {
  const char* activity = host::current_plugin_activity();
  if (*activity == '\0') return;
  write_stderr("qforge: a plugin called exit() while running ", activity, "\n");
  ::_exit(host::kExitInternal);
}

}  // namespace

void install_signal_reports() {
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) std::signal(sig, on_fatal_signal);
  std::atexit(on_exit_during_plugin);
}

InterruptScope::InterruptScope() {
  std::signal(SIGALRM, on_alarm);
  std::signal(SIGINT, on_sigint);
}

InterruptScope::~InterruptScope() {
  std::signal(SIGINT, SIG_DFL);
  alarm(0);
  std::signal(SIGALRM, SIG_DFL);
}

}  // namespace qforge::cli
