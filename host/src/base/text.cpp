#include "qforge_host/base/text.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "qforge_host/base/errors.hpp"

namespace qforge::host {

namespace {

// A FIFO or a device would block or never end: only regular files are read.
void require_regular(const std::string& path, const std::string& what) {
  std::error_code ec;
  if (std::filesystem::exists(path, ec) && !std::filesystem::is_regular_file(path, ec))
    throw UsageError(what + " " + path + ": not a regular file");
}

}  // namespace

std::string read_file(const std::string& path, const std::string& what) {
  require_regular(path, what);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(what + " " + path + ": cannot open it");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw UsageError(what + " " + path + ": read error");
  return ss.str();
}

std::string read_file(const std::string& path, const std::string& what, uint64_t limit) {
  require_regular(path, what);
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw UsageError(what + " " + path + ": cannot open it");
  const auto size = static_cast<uint64_t>(in.tellg());
  if (size > limit)
    throw UsageError(what + " " + path + ": " + std::to_string(size) +
                     " bytes, more than the limit of " + std::to_string(limit));
  in.seekg(0);
  std::string text(size, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(size)))
    throw UsageError(what + " " + path + ": read error");
  return text;
}

std::string strip(std::string_view s) {
  const char* ws = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return std::string(s.substr(b, s.find_last_not_of(ws) - b + 1));
}

std::string quote(std::string_view s) {
  constexpr std::size_t kMax = 160;
  static const char* hex = "0123456789abcdef";
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "'";
}

std::string grouped(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

size_t utf8_len(const unsigned char* s, size_t n, size_t* subpart) {
  unsigned char b = s[0];
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    if (subpart) *subpart = 1;
    return 0;
  }
  size_t k = 1;
  for (; k < need && k < n; ++k) {
    unsigned char c = s[k];
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) break;
  }
  if (k == need) return need;
  if (subpart) *subpart = k;
  return 0;
}

size_t find_invalid_utf8(std::string_view s) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0, n = s.size();
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len = utf8_len(p + i, n - i);
    if (len == 0) return i;
    i += len;
  }
  return std::string_view::npos;
}

}  // namespace qforge::host
