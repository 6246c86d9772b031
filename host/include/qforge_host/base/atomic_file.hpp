// Files that appear complete or not at all: written to "<path>.tmp-<pid>",
// fsync'ed, renamed over `path`, and the directory fsync'ed, so an
// interrupted run (kill, power loss) never leaves a file that looks complete.
#pragma once

#include <cstddef>
#include <string>

namespace qforge::host {

class AtomicFile {
 public:
  // Creates the temporary file. Throws IoError.
  explicit AtomicFile(std::string path);
  // Removes the temporary file unless committed.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t n);  // throws IoError
  // fsync, rename over the target, fsync the directory. Throws IoError.
  void commit();

 private:
  [[noreturn]] void fail(const std::string& what) const;
  std::string path_, target_;
  int fd_ = -1;
  bool committed_ = false;
};

// `text` as the whole of `path`, atomically (above).
void write_text_atomic(const std::string& path, const std::string& text);

}  // namespace qforge::host
