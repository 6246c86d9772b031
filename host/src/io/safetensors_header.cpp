// The safetensors header and index parsers (no LibTorch here: the fuzz target
// in tests/fuzz/ compiles this file alone).
//
// The header is parsed with a streaming SAX handler rather than into a DOM:
// every event is checked as it arrives, so a hostile header fails at the first
// bad token, nothing nests deeper than a valid header can, and memory grows
// only with what is kept (names, shapes, metadata), never with the nesting or
// the size of values that are thrown away.
#include "qforge_host/io/safetensors_header.hpp"
#include "qforge_host/base/text.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

namespace qforge::host {

namespace {

using json = nlohmann::json;

// Keeps only printable ASCII (parser messages quote raw input bytes).
std::string printable(const std::string& s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    out += (c >= 0x20 && c < 0x7f) ? ch : '?';
  }
  return out;
}

// "[json.exception.parse_error.101] parse error at ..." -> "parse error at ...".
std::string json_reason(const std::exception& e) {
  std::string what = e.what();
  if (!what.empty() && what[0] == '[') {
    const auto close = what.find("] ");
    if (close != std::string::npos) what = what.substr(close + 2);
  }
  return printable(what);
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The SAX handler: a small state machine over the only shape a valid header
// has (root object -> entry object -> shape / data_offsets array, or root ->
// __metadata__ object -> strings). Throws ModelFileError on the first event
// that does not fit; nlohmann lets the exception through.
class HeaderHandler {
 public:
  using number_integer_t = json::number_integer_t;
  using number_unsigned_t = json::number_unsigned_t;
  using number_float_t = json::number_float_t;
  using string_t = json::string_t;
  using binary_t = json::binary_t;

  HeaderHandler(const std::string& file, uint64_t data_bytes) : file_(file), data_bytes_(data_bytes) {}

  SafetensorsHeader& result() { return out_; }

  bool null() { return scalar("null"); }
  bool boolean(bool) { return scalar("a boolean"); }
  bool number_integer(number_integer_t v) {
    if (v < 0) return scalar("a negative number");
    return number(static_cast<uint64_t>(v));
  }
  bool number_unsigned(number_unsigned_t v) { return number(v); }
  bool number_float(number_float_t, const string_t&) { return scalar("a non-integer number"); }
  bool binary(binary_t&) { return scalar("binary data"); }

  bool string(string_t& v) {
    switch (state_) {
      case State::Metadata:
        out_.metadata.emplace(key_, std::move(v));
        return true;
      case State::Entry:
        if (field_ == Field::Dtype) {
          const auto dt = st_dtype_from_name(v);
          if (!dt)
            tensor_fail("unknown dtype " + quote(v) +
                        " (expected F64, F32, F16, BF16, F8_E4M3, I64, I32, I16, I8, U8 or BOOL)");
          entry_.dtype = *dt;
          have_dtype_ = true;
          return true;
        }
        return scalar("a string");
      case State::Skip:
        return true;
      default:
        return scalar("a string");
    }
  }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::Start:
        state_ = State::Root;
        return true;
      case State::Root:
        if (key_ == "__metadata__") {
          state_ = State::Metadata;
          return true;
        }
        state_ = State::Entry;
        entry_ = TensorInfo{};
        entry_.name = key_;
        entry_.file = file_;
        have_dtype_ = have_shape_ = have_offsets_ = false;
        seen_fields_.clear();
        return true;
      case State::Entry:
        if (field_ == Field::Unknown) return start_skip();
        return scalar("an object");
      case State::Skip:
        return nest_skip();
      default:
        return scalar("an object");
    }
  }

  bool start_array(std::size_t) {
    switch (state_) {
      case State::Entry:
        if (field_ == Field::Shape) {
          state_ = State::Shape;
          entry_.shape.clear();
          return true;
        }
        if (field_ == Field::Offsets) {
          state_ = State::Offsets;
          offsets_.clear();
          return true;
        }
        if (field_ == Field::Unknown) return start_skip();
        return scalar("an array");
      case State::Skip:
        return nest_skip();
      default:
        return scalar("an array");
    }
  }

  bool key(string_t& k) {
    switch (state_) {
      case State::Root:
        if (k.empty()) fail("a tensor has an empty name");
        if (out_.tensors.count(k) || (k == "__metadata__" && seen_metadata_))
          fail("duplicate key " + quote(k) + " in the header");
        if (k == "__metadata__") seen_metadata_ = true;
        key_ = std::move(k);
        return true;
      case State::Metadata:
        if (out_.metadata.count(k)) fail("duplicate key " + quote(k) + " in __metadata__");
        key_ = std::move(k);
        return true;
      case State::Entry:
        if (!seen_fields_.insert(k).second) tensor_fail("duplicate field " + quote(k));
        if (k == "dtype")
          field_ = Field::Dtype;
        else if (k == "shape")
          field_ = Field::Shape;
        else if (k == "data_offsets")
          field_ = Field::Offsets;
        else
          field_ = Field::Unknown;  // ignored, as the reference reader does
        return true;
      default:  // Skip
        return true;
    }
  }

  bool end_object() {
    switch (state_) {
      case State::Root:
        state_ = State::Done;
        return true;
      case State::Metadata:
        state_ = State::Root;
        return true;
      case State::Entry:
        finish_entry();
        state_ = State::Root;
        return true;
      default:  // Skip
        return end_skip();
    }
  }

  bool end_array() {
    switch (state_) {
      case State::Shape:
        state_ = State::Entry;
        have_shape_ = true;
        return true;
      case State::Offsets:
        if (offsets_.size() != 2)
          tensor_fail("data_offsets has " + std::to_string(offsets_.size()) +
                      " elements, expected two non-negative integers [begin, end]");
        state_ = State::Entry;
        have_offsets_ = true;
        return true;
      default:  // Skip
        return end_skip();
    }
  }

  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    fail("header is not valid JSON: " + json_reason(ex));
    return false;
  }

  [[noreturn]] void fail(const std::string& what) const { throw ModelFileError(file_ + ": " + what); }

 private:
  enum class State { Start, Root, Metadata, Entry, Shape, Offsets, Skip, Done };
  enum class Field { Dtype, Shape, Offsets, Unknown };
  static constexpr int kMaxSkipDepth = 16;

  [[noreturn]] void tensor_fail(const std::string& what) const {
    fail("tensor " + quote(entry_.name) + ": " + what);
  }

  // A scalar (or a container) where none is allowed in the current state.
  bool scalar(const char* what) {
    switch (state_) {
      case State::Start:
        fail(std::string("header is not a JSON object (it is ") + what + ")");
      case State::Root:
        if (key_ == "__metadata__") fail(std::string("__metadata__ is not an object (it is ") + what + ")");
        fail("tensor " + quote(key_) + ": entry is not a JSON object (it is " + what + ")");
      case State::Metadata:
        fail("__metadata__ value for key " + quote(key_) + " is not a string (it is " + what + ")");
      case State::Entry:
        if (field_ == Field::Unknown) return true;  // ignored field
        if (field_ == Field::Dtype) tensor_fail(std::string("dtype is not a string (it is ") + what + ")");
        if (field_ == Field::Shape)
          tensor_fail(std::string("shape is not an array of non-negative integers (it is ") + what + ")");
        tensor_fail(std::string("data_offsets is not an array of two non-negative integers (it is ") +
                    what + ")");
      case State::Shape:
        tensor_fail(std::string("shape is not an array of non-negative integers (it holds ") + what + ")");
      case State::Offsets:
        tensor_fail(std::string("data_offsets is not an array of two non-negative integers (it holds ") +
                    what + ")");
      case State::Skip:
        return true;
      case State::Done:
        break;
    }
    fail("unexpected JSON after the header object");
  }

  bool number(uint64_t v) {
    switch (state_) {
      case State::Shape:
        if (entry_.shape.size() >= kMaxTensorRank)
          tensor_fail("shape has more than " + std::to_string(kMaxTensorRank) + " dimensions");
        if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          tensor_fail("shape dimension " + std::to_string(v) + " is too large");
        entry_.shape.push_back(static_cast<int64_t>(v));
        return true;
      case State::Offsets:
        if (offsets_.size() >= 2)
          tensor_fail("data_offsets has more than two elements, expected [begin, end]");
        offsets_.push_back(v);
        return true;
      default:
        return scalar("a number");
    }
  }

  bool start_skip() {
    state_ = State::Skip;
    skip_depth_ = 1;
    return true;
  }
  bool nest_skip() {
    if (++skip_depth_ > kMaxSkipDepth)
      tensor_fail("an unknown field nests deeper than " + std::to_string(kMaxSkipDepth) + " levels");
    return true;
  }
  bool end_skip() {
    if (--skip_depth_ == 0) state_ = State::Entry;
    return true;
  }

  void finish_entry() {
    if (!have_dtype_) tensor_fail("missing dtype");
    if (!have_shape_) tensor_fail("missing shape");
    if (!have_offsets_) tensor_fail("missing data_offsets");
    entry_.begin = offsets_[0];
    entry_.end = offsets_[1];
    const std::string offsets =
        "data_offsets [" + std::to_string(entry_.begin) + ", " + std::to_string(entry_.end) + "]";
    if (entry_.begin > entry_.end) tensor_fail(offsets + " has begin > end");

    // Element count x item size, refusing anything that would overflow int64
    // (ATen's limit) even when a zero dimension makes the tensor empty.
    const uint64_t item = st_dtype_size(entry_.dtype);
    uint64_t bytes = item;
    bool empty = false;
    for (int64_t d : entry_.shape) {
      if (d == 0) {
        empty = true;
        continue;
      }
      if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes) ||
          bytes > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        tensor_fail("shape " + shape_text(entry_.shape) + " with dtype " + st_dtype_name(entry_.dtype) +
                    " is too large (its byte size overflows)");
    }
    if (empty) bytes = 0;
    if (bytes != entry_.end - entry_.begin)
      tensor_fail("shape " + shape_text(entry_.shape) + " with dtype " + st_dtype_name(entry_.dtype) +
                  " needs " + std::to_string(bytes) + " bytes but " + offsets + " span " +
                  std::to_string(entry_.end - entry_.begin));
    if (entry_.end > data_bytes_)
      tensor_fail(offsets + " go beyond the data area (" + std::to_string(data_bytes_) +
                  " bytes); the file is truncated or the header is wrong");
    std::string name = entry_.name;
    out_.tensors.emplace(std::move(name), std::move(entry_));
  }

  const std::string& file_;
  uint64_t data_bytes_;
  SafetensorsHeader out_;
  State state_ = State::Start;
  std::string key_;
  bool seen_metadata_ = false;
  TensorInfo entry_;
  Field field_ = Field::Unknown;
  bool have_dtype_ = false, have_shape_ = false, have_offsets_ = false;
  std::vector<uint64_t> offsets_;
  std::set<std::string> seen_fields_;
  int skip_depth_ = 0;
};

// Deepest nesting of [ and { in JSON text (strings skipped); stops counting
// once `limit` is passed. Lets the index be parsed into a DOM without a
// deeply nested document costing memory or stack.
std::size_t json_depth(const std::string& text, std::size_t limit) {
  std::size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

}  // namespace

const char* st_dtype_name(StDtype dtype) {
  switch (dtype) {
    case StDtype::F64: return "F64";
    case StDtype::F32: return "F32";
    case StDtype::F16: return "F16";
    case StDtype::BF16: return "BF16";
    case StDtype::I64: return "I64";
    case StDtype::I32: return "I32";
    case StDtype::I16: return "I16";
    case StDtype::I8: return "I8";
    case StDtype::U8: return "U8";
    case StDtype::BOOL: return "BOOL";
    case StDtype::F8_E4M3: return "F8_E4M3";
  }
  return "?";
}

std::size_t st_dtype_size(StDtype dtype) {
  switch (dtype) {
    case StDtype::F64:
    case StDtype::I64: return 8;
    case StDtype::F32:
    case StDtype::I32: return 4;
    case StDtype::F16:
    case StDtype::BF16:
    case StDtype::I16: return 2;
    case StDtype::I8:
    case StDtype::U8:
    case StDtype::BOOL:
    case StDtype::F8_E4M3: return 1;
  }
  return 1;
}

std::optional<StDtype> st_dtype_from_name(const std::string& name) {
  static const std::pair<const char*, StDtype> kNames[] = {
      {"F64", StDtype::F64}, {"F32", StDtype::F32}, {"F16", StDtype::F16}, {"BF16", StDtype::BF16},
      {"I64", StDtype::I64}, {"I32", StDtype::I32}, {"I16", StDtype::I16}, {"I8", StDtype::I8},
      {"U8", StDtype::U8},   {"BOOL", StDtype::BOOL}, {"F8_E4M3", StDtype::F8_E4M3}};
  for (const auto& [n, d] : kNames)
    if (name == n) return d;
  return std::nullopt;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, std::size_t size, const std::string& name) {
  auto fail = [&](const std::string& what) { throw ModelFileError(name + ": " + what); };
  if (size < 8)
    fail("not a safetensors file: " + std::to_string(size) +
         " bytes, shorter than the 8-byte header length");
  const uint64_t n = read_u64_le(data);
  if (n == 0) fail("not a safetensors file: header length is 0");
  if (n > kMaxSafetensorsHeaderBytes)
    fail("not a safetensors file: header length " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  if (n > size - 8)
    fail("header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
         " bytes after it; the file is truncated or not a safetensors file");

  HeaderHandler handler(name, size - 8 - n);
  const uint8_t* first = data + 8;
  const uint8_t* last = first + n;
  // The reference reader requires the header to start with '{'; say so
  // plainly rather than with a parser message about an unexpected byte.
  if (*first != '{') fail("header does not start with '{': not a safetensors file");
  bool ok = false;
  try {
    ok = json::sax_parse(first, last, &handler, json::input_format_t::json, /*strict=*/true);
  } catch (const ModelFileError&) {
    throw;
  } catch (const std::exception& e) {  // defensive: the handler reports parse errors itself
    fail("header is not valid JSON: " + json_reason(e));
  }
  if (!ok) fail("header is not valid JSON");

  SafetensorsHeader& out = handler.result();
  out.header_bytes = n;
  out.data_offset = 8 + n;
  out.data_bytes = size - 8 - n;

  // Overlapping spans: sort the non-empty ones by begin; each must start at
  // or after the furthest end so far. (Empty tensors occupy no bytes.)
  std::vector<const TensorInfo*> spans;
  spans.reserve(out.tensors.size());
  for (const auto& [k, t] : out.tensors)
    if (t.end > t.begin) spans.push_back(&t);
  std::sort(spans.begin(), spans.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  const TensorInfo* furthest = nullptr;
  for (const TensorInfo* t : spans) {
    if (furthest && t->begin < furthest->end)
      fail("tensor " + quote(t->name) + ": data_offsets [" + std::to_string(t->begin) + ", " +
           std::to_string(t->end) + "] overlap those of tensor " + quote(furthest->name) + " [" +
           std::to_string(furthest->begin) + ", " + std::to_string(furthest->end) + "]");
    if (!furthest || t->end > furthest->end) furthest = t;
  }
  return std::move(out);
}

std::map<std::string, std::string> parse_safetensors_index(const std::string& text, const std::string& name) {
  auto fail = [&](const std::string& what) { throw ModelFileError(name + ": " + what); };
  if (text.size() > kMaxIndexFileBytes)
    fail("index file is " + std::to_string(text.size()) + " bytes, more than the limit of " +
         std::to_string(kMaxIndexFileBytes));
  constexpr std::size_t kMaxDepth = 8;
  if (json_depth(text, kMaxDepth) > kMaxDepth)
    fail("index file nests deeper than " + std::to_string(kMaxDepth) + " levels");
  json doc;
  try {
    doc = json::parse(text);
  } catch (const std::exception& e) {
    fail("index file is not valid JSON: " + json_reason(e));
  }
  if (!doc.is_object()) fail("index file is not a JSON object");
  const auto wm = doc.find("weight_map");
  if (wm == doc.end()) fail("index file has no \"weight_map\"");
  if (!wm->is_object()) fail("\"weight_map\" is not a JSON object");

  std::map<std::string, std::string> out;
  for (const auto& [tensor, shard] : wm->items()) {
    const std::string where = "tensor " + quote(tensor) + ": ";
    if (tensor.empty()) fail("\"weight_map\" has an empty tensor name");
    if (!shard.is_string()) fail(where + "shard file is not a string");
    const std::string& file = shard.get_ref<const std::string&>();
    if (file.empty()) fail(where + "shard file name is empty");
    if (file.find('\0') != std::string::npos) fail(where + "shard file name contains a NUL byte");
    if (file[0] == '/') fail(where + "shard file " + quote(file) + " is an absolute path");
    // Component by component: no "..", so the name stays inside the directory.
    std::size_t start = 0;
    while (start <= file.size()) {
      const std::size_t slash = std::min(file.find('/', start), file.size());
      if (file.compare(start, slash - start, "..") == 0)
        fail(where + "shard file " + quote(file) + " escapes the model directory (\"..\")");
      start = slash + 1;
    }
    out.emplace(tensor, file);
  }
  return out;
}

}  // namespace qforge::host
