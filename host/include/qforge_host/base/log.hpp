// Levelled logging to stderr through fmt.
#pragma once

#include <fmt/format.h>

#include <string_view>

namespace qforge::host {

enum class LogLevel : int { trace = 0, debug = 1, info = 2, warn = 3, error = 4, off = 5 };

void set_log_level(LogLevel level);
LogLevel log_level();
// Parses "trace|debug|info|warn|error|off"; throws UsageError otherwise.
LogLevel parse_log_level(std::string_view text);
void log_line(LogLevel level, std::string_view message);

template <class... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (level >= log_level()) log_line(level, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace qforge::host
