#include "qforge_host/base/digest.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include "qforge_host/base/errors.hpp"

namespace qforge::host {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull, kFnvPrime = 0x100000001b3ull;

void fnv(uint64_t& h, const char* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= kFnvPrime;
  }
}

std::string hex(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0)
    throw IoError(path + ": cannot stat it: " + std::strerror(errno));
  return st;
}

}  // namespace

std::string file_digest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot read it");
  uint64_t h = kFnvOffset, size = 0;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = static_cast<size_t>(in.gcount());
    fnv(h, buf.data(), n);
    size += n;
  }
  if (in.bad()) throw IoError(path + ": read error");
  return std::to_string(size) + ":" + hex(h);
}

std::string file_identity(const std::string& path) {
  const struct stat st = stat_of(path);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path + ": cannot read it");
  const uint64_t size = static_cast<uint64_t>(st.st_size), window = 1 << 20;
  uint64_t h = kFnvOffset;
  std::vector<char> buf(window);
  in.read(buf.data(), static_cast<std::streamsize>(std::min(size, window)));
  fnv(h, buf.data(), static_cast<size_t>(in.gcount()));
  if (size > window) {
    in.clear();
    in.seekg(static_cast<std::streamoff>(size - window));
    in.read(buf.data(), static_cast<std::streamsize>(window));
    fnv(h, buf.data(), static_cast<size_t>(in.gcount()));
  }
  const long long mtime_ns =
      static_cast<long long>(st.st_mtim.tv_sec) * 1000000000ll + st.st_mtim.tv_nsec;
  return std::to_string(size) + ":" + std::to_string(mtime_ns) + ":" + hex(h);
}

std::string text_digest(std::string_view text) {
  uint64_t h = kFnvOffset;
  fnv(h, text.data(), text.size());
  return hex(h);
}

std::map<std::string, std::string> model_files_identity(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (!e.is_regular_file()) continue;
    if (name == "config.json" || name.find("tokenizer") != std::string::npos)
      out[name] = file_digest(e.path().string());
    else if (e.path().extension() == ".safetensors" || name.find(".index.json") != std::string::npos)
      out[name] = file_identity(e.path().string());
  }
  return out;
}

}  // namespace qforge::host
