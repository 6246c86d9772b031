// Small text utilities shared by every stage.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace qforge::host {

// The whole file. Throws UsageError "<what> <path>: cannot open it" / "read
// error" (`what` says what the file is for, e.g. "calibration file").
std::string read_file(const std::string& path, const std::string& what = "file");
// The same, refusing a file larger than `limit` bytes.
std::string read_file(const std::string& path, const std::string& what, uint64_t limit);

// `s` without leading and trailing ASCII whitespace (" \t\r\n\f\v").
std::string strip(std::string_view s);

// 'name' fit for an error message: quoted, control bytes and backslashes
// escaped as \xNN (names come from untrusted files), cut after 160 bytes.
std::string quote(std::string_view s);

// Length of the well-formed UTF-8 sequence at s (n >= 1 bytes available),
// or 0 when it is ill-formed; then *subpart is the length of its maximal
// valid prefix (>= 1), which lossy decoding replaces by one U+FFFD.
size_t utf8_len(const unsigned char* s, size_t n, size_t* subpart = nullptr);
// Byte offset of the first ill-formed UTF-8 sequence in s, or npos.
size_t find_invalid_utf8(std::string_view s);

// 1234567 -> "1,234,567"
std::string grouped(int64_t v);

}  // namespace qforge::host
