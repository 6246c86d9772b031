// The qforge_host table handed to plugins, and status helpers.
#pragma once

#include <qforge/qforge.h>

#include <string>

namespace qforge::host {

// The process-wide host services (log, status, progress, cancellation,
// allocation, extensions). Valid for the life of the process.
const qforge_host* services();

// Offers a host extension (DESIGN.md rule 10) through qforge_host.get_extension:
// later stages register theirs (the training stage its qforge.host.train).
void offer_host_extension(const char* id, uint32_t revision, const void* table);

// Throws PluginError for a non-NULL status (releasing it); `what` prefixes the message.
void throw_if_error(qforge_status* status, const std::string& what);

// Asks long work to stop (e.g. from a SIGINT handler; async-signal-safe).
void request_cancel();
bool cancel_requested();

// What plugin code is running now ("org.qforge.gptq on model.layers.3.mlp.up_proj"),
// so that a crash or an exit() inside a plugin can be reported with the
// component and layer. current_plugin_activity() is async-signal-safe and
// returns "" when no plugin call is in progress.
class PluginActivity {
 public:
  explicit PluginActivity(const std::string& what);  // marks the call's start
  ~PluginActivity();                                  // and its end
  PluginActivity(const PluginActivity&) = delete;
  PluginActivity& operator=(const PluginActivity&) = delete;
};
const char* current_plugin_activity();

// While fd >= 0, each PluginActivity also writes its text to that file (and
// empties it when the call returns), so that a run which dies inside a plugin
// (a crash, exit(), SIGKILL) leaves the component and layer for the next run
// to report. -1 stops the recording; the caller owns the descriptor.
void record_plugin_activity_in(int fd);

}  // namespace qforge::host
