#include "qforge_host/base/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "qforge_host/base/log.hpp"

namespace qforge::host {
namespace {
std::string clock(double seconds) {
  auto s = static_cast<int64_t>(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}
}  // namespace

ProgressLine::ProgressLine(std::string task, std::string unit)
    : task_(std::move(task)), unit_(std::move(unit)), start_(std::chrono::steady_clock::now()),
      tty_(isatty(fileno(stderr)) != 0) {}

ProgressLine::~ProgressLine() {
  if (drawn_ && tty_) std::fputc('\n', stderr);
}

void ProgressLine::update(int64_t done, int64_t total) {
  if (log_level() > LogLevel::info || total <= 0) return;
  double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  double frac = static_cast<double>(done) / static_cast<double>(total);
  std::string eta = done > 0 ? clock(elapsed / frac - elapsed) : "?";
  std::string line = fmt::format("[{}] {}/{} {} {:5.1f}%  elapsed {}  ETA {}", task_, done, total,
                                 unit_, 100 * frac, clock(elapsed), eta);
  if (tty_) {
    fmt::print(stderr, "\r{}\x1b[K", line);
    drawn_ = true;
  } else {
    int decile = static_cast<int>(frac * 10);
    if (decile == last_decile_) return;
    last_decile_ = decile;
    fmt::print(stderr, "{}\n", line);
  }
  std::fflush(stderr);
}

}  // namespace qforge::host
