// One writer per output directory: an exclusive flock on "<dir>/.qforge-lock"
// held for as long as the object lives (a whole quantize run, --resume
// included). The file names its holder (pid, command), so a refused run can
// say who holds it. The kernel drops the lock when the holder dies, so a
// killed run never leaves a directory locked.
#pragma once

#include <string>

namespace qforge::host {

class DirLock {
 public:
  // Creates `dir` when missing (removed again on release when it is then
  // empty) and locks it. Throws UsageError naming the holder when another
  // process holds the lock, IoError when the lock cannot be taken.
  DirLock(const std::string& dir, const std::string& holder);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

  static constexpr const char* kFileName = ".qforge-lock";

 private:
  std::string dir_, path_;
  int fd_ = -1;
  bool created_dir_ = false;
};

}  // namespace qforge::host
