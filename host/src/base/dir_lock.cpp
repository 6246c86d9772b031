#include "qforge_host/base/dir_lock.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "qforge_host/base/errors.hpp"

namespace fs = std::filesystem;

namespace qforge::host {

DirLock::DirLock(const std::string& dir, const std::string& holder)
    : dir_(dir), path_((fs::path(dir) / kFileName).string()) {
  std::error_code ec;
  if (!fs::exists(dir_, ec)) {
    if (!fs::create_directories(dir_, ec) && ec)
      throw UsageError(dir_ + ": cannot create it: " + ec.message());
    created_dir_ = true;
  } else if (!fs::is_directory(dir_, ec)) {
    throw UsageError(dir_ + " is not a directory");
  }
  // Retry when the file we locked was unlinked by a holder that was just
  // releasing it (then a third run could lock a new file at the same path).
  for (int attempt = 0; attempt < 100; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0 && errno == ELOOP)  // planted by someone: refuse, never follow
      throw UsageError(path_ + " is a symbolic link; qforge's lock file must be a plain file");
    if (fd_ < 0) throw IoError(path_ + ": cannot open the lock file: " + std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      char buf[512] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      ::close(fd_);
      fd_ = -1;
      if (err == EWOULDBLOCK)
        throw UsageError(dir_ + " is in use by another qforge run (" +
                         (n > 0 ? std::string(buf, static_cast<size_t>(n)) : "holder unknown") +
                         "); wait for it to finish or choose another --out");
      throw IoError(path_ + ": cannot lock it: " + std::strerror(err));
    }
    struct stat held {}, now {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &now) == 0 &&
        held.st_ino == now.st_ino && held.st_dev == now.st_dev) {
      const std::string text = "pid " + std::to_string(::getpid()) + ", " + holder;
      if (::ftruncate(fd_, 0) == 0) {
        [[maybe_unused]] ssize_t w = ::pwrite(fd_, text.data(), text.size(), 0);
      }
      return;
    }
    ::close(fd_);
    fd_ = -1;
  }
  throw IoError(path_ + ": cannot lock it (it keeps being replaced)");
}

DirLock::~DirLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still locked: a waiting run re-checks the inode
  ::close(fd_);
  std::error_code ec;
  if (created_dir_ && fs::is_empty(dir_, ec)) fs::remove(dir_, ec);
}

}  // namespace qforge::host
