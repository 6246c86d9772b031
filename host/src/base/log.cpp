#include "qforge_host/base/log.hpp"

#include <atomic>
#include <cstdio>
#include <mutex>

#include "qforge_host/base/errors.hpp"

namespace qforge::host {
namespace {
std::atomic<int> g_level{static_cast<int>(LogLevel::info)};
std::mutex g_mutex;
const char* const kNames[] = {"trace", "debug", "info", "warn", "error", "off"};
}  // namespace

void set_log_level(LogLevel level) { g_level = static_cast<int>(level); }
LogLevel log_level() { return static_cast<LogLevel>(g_level.load()); }

LogLevel parse_log_level(std::string_view text) {
  for (int k = 0; k <= static_cast<int>(LogLevel::off); ++k)
    if (text == kNames[k]) return static_cast<LogLevel>(k);
  throw UsageError(fmt::format(
      "invalid log level '{}': expected one of trace, debug, info, warn, error, off", text));
}

void log_line(LogLevel level, std::string_view message) {
  if (level < log_level() || level >= LogLevel::off) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  fmt::print(stderr, "[{}] {}\n", kNames[static_cast<int>(level)], message);
  std::fflush(stderr);
}

}  // namespace qforge::host
