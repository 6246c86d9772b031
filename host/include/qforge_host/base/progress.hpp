// Progress with an ETA on stderr for long work: a redrawn line on a terminal,
// else a line every 10% (so logs stay readable). Silent when logging is off.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace qforge::host {

class ProgressLine {
 public:
  ProgressLine(std::string task, std::string unit);
  ~ProgressLine();  // ends the line
  void update(int64_t done, int64_t total);

 private:
  std::string task_, unit_;
  std::chrono::steady_clock::time_point start_;
  bool tty_;
  int last_decile_ = -1;
  bool drawn_ = false;
};

}  // namespace qforge::host
