// The qforge_host table handed to plugins, and status helpers.
#pragma once

#include <qforge/qforge.h>

#include <string>

namespace qforge::host {

// The process-wide host services (log, status, progress, cancellation,
// allocation, extensions). Valid for the life of the process.
const qforge_host* services();

// Throws PluginError for a non-NULL status (releasing it); `what` prefixes the message.
void throw_if_error(qforge_status* status, const std::string& what);

// Asks long work to stop (e.g. from a SIGINT handler; async-signal-safe).
void request_cancel();
bool cancel_requested();

}  // namespace qforge::host
