// compressed-tensors codec; see compressed_tensors_codec.hpp and the layouts,
// <qforge/formats/ct_pack_quantized_v1.h> and ct_naive_quantized_v1.h.
#include "compressed_tensors_codec.hpp"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <qforge/formats/ct_naive_quantized_v1.h>
#include <qforge/formats/ct_pack_quantized_v1.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <regex>
#include <string_view>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace qforge::host::ct {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

[[noreturn]] void refuse(const std::string& message) { throw UsageError(message); }

int64_t words_for(int64_t n, int bits) { return (n * bits + 31) / 32; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------- bit streams --
// n codes (each < 2^bits) -> words_for(n, bits) words, LSB first.
void pack_stream(const int32_t* codes, int64_t n, int bits, uint32_t* words) {
  std::fill(words, words + words_for(n, bits), 0u);
  for (int64_t j = 0; j < n; ++j) {
    const int64_t bit = j * bits;
    const int shift = static_cast<int>(bit % 32);
    const auto v = static_cast<uint32_t>(codes[j]);
    words[bit / 32] |= v << shift;
    if (shift + bits > 32) words[bit / 32 + 1] |= v >> (32 - shift);
  }
}

// Code j of the stream starting at `words` (read with stride).
int32_t stream_code(const uint32_t* words, int64_t stride, int64_t j, int bits) {
  const int64_t bit = j * bits;
  const int shift = static_cast<int>(bit % 32);
  uint64_t v = words[(bit / 32) * stride] >> shift;
  if (shift + bits > 32) v |= static_cast<uint64_t>(words[(bit / 32 + 1) * stride]) << (32 - shift);
  return static_cast<int32_t>(v & ((1u << bits) - 1u));
}

// ------------------------------------------------------------------- checks --
// safetensors-style names (float16, int32, ...).
std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kShort: return "int16";
    case at::kChar: return "int8";
    case at::kByte: return "uint8";
    default: return c10::toString(t);
  }
}

std::string shape_str(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
  return s + "]";
}

// `t` has dtype `dtype` (one of `dtypes`) and shape `shape`; else refuse naming `what`.
void expect(const std::string& what, const at::Tensor& t, std::initializer_list<at::ScalarType> dtypes,
            std::vector<int64_t> shape) {
  if (!t.defined()) refuse(what + ": missing");
  const bool dtype_ok = std::find(dtypes.begin(), dtypes.end(), t.scalar_type()) != dtypes.end();
  if (!dtype_ok || t.sizes() != at::IntArrayRef(shape)) {
    std::string want;
    for (auto d : dtypes) want += (want.empty() ? "" : "|") + dtype_name(d);
    refuse(fmt::format("{}: expected {} [{}], got {} {}", what, want, fmt::join(shape, ", "),
                       dtype_name(t.scalar_type()), shape_str(t)));
  }
}

bool naive(const Scheme& s) { return s.format != Format::pack_quantized; }

void check_scheme(const Scheme& s, const std::string& where) {
  if (naive(s)) {
    if (s.num_bits != 8 || !s.symmetric || s.group_size != -1 || s.actorder != ActOrder::none ||
        (s.strategy != Strategy::channel && s.strategy != Strategy::tensor))
      refuse(fmt::format("{}: {} weights must be 8-bit symmetric channel or tensor", where,
                         format_name(s.format)));
    if (s.input && (s.input->type != s.type ||
                    (s.input->strategy != Strategy::token && s.input->strategy != Strategy::tensor)))
      refuse(where + ": input activations must be of the weights' type, token or tensor");
    return;
  }
  if (s.type != Type::integer || s.input)
    refuse(where + ": pack-quantized holds int weights without input activations");
  if (s.strategy != Strategy::group && s.strategy != Strategy::channel)
    refuse(where + ": pack-quantized strategies are group and channel");
  if (s.num_bits < 2 || s.num_bits > 8)
    refuse(fmt::format("{}: num_bits {} outside [2, 8]", where, s.num_bits));
  if (s.strategy == Strategy::group && s.group_size <= 0)
    refuse(fmt::format("{}: strategy group needs group_size > 0, got {}", where, s.group_size));
  if (s.strategy == Strategy::channel && s.group_size != -1)
    refuse(fmt::format("{}: strategy channel needs group_size -1, got {}", where, s.group_size));
  if (s.strategy == Strategy::channel && s.actorder != ActOrder::none)
    refuse(where + ": actorder needs strategy group (compressed-tensors rejects it for channel)");
}

// g_idx [K] with values in [0, groups): natural (j / G), or a relabelling of
// contiguous groups (group g holds exactly min(G, K - g*G) columns), or neither.
enum class GroupIndex { natural, permuted, invalid };
GroupIndex classify(const at::Tensor& g_idx, int64_t groups, int64_t group_size) {
  const int32_t* g = g_idx.data_ptr<int32_t>();
  const int64_t k = g_idx.numel();
  bool natural = true;
  std::vector<int64_t> count(static_cast<size_t>(groups), 0);
  for (int64_t j = 0; j < k; ++j) {
    natural = natural && g[j] == (groups == 1 ? 0 : j / group_size);
    ++count[static_cast<size_t>(g[j])];
  }
  if (natural) return GroupIndex::natural;
  for (int64_t i = 0; i < groups; ++i)
    if (count[static_cast<size_t>(i)] != std::min(group_size, k - i * group_size))
      return GroupIndex::invalid;
  return GroupIndex::permuted;
}

void check_range(const std::string& what, const at::Tensor& t, int64_t lo, int64_t hi) {
  if (t.numel() == 0) return;
  const int64_t mn = t.min().item<int64_t>(), mx = t.max().item<int64_t>();
  if (mn < lo || mx > hi)
    refuse(fmt::format("{}: values must be in [{}, {}], found {}", what, lo, hi, mn < lo ? mn : mx));
}

// ------------------------------------------------------------------ matching --
// compressed-tensors / vLLM target matching: "re:" + regex (re.match: anchored
// at the start), the class name "Linear", or an exact module name.
enum class Match { none, class_name, name };
Match match(const std::string& target, const std::string& name, const std::string& where) {
  if (target.rfind("re:", 0) == 0) {
    try {
      const std::regex re(target.substr(3), std::regex::ECMAScript);
      return std::regex_search(name, re, std::regex_constants::match_continuous) ? Match::name
                                                                                 : Match::none;
    } catch (const std::regex_error& e) {
      refuse(fmt::format("{}: bad regex '{}': {}", where, target, e.what()));
    }
  }
  if (target == "Linear") return Match::class_name;
  return target == name ? Match::name : Match::none;
}

bool ignored(const std::vector<std::string>& ignore, const std::string& name, const std::string& where) {
  for (const auto& t : ignore)
    if (match(t, name, where) != Match::none) return true;
  return false;
}

const char* actorder_name(ActOrder a) {
  return a == ActOrder::group ? "group" : a == ActOrder::weight ? "static" : nullptr;
}

// The shards vLLM fuses into one layer (qkv_proj, gate_up_proj).
const std::vector<std::vector<std::string>> kFusedShards = {{"q_proj", "k_proj", "v_proj"},
                                                           {"gate_proj", "up_proj"}};

std::string escape_regex(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$|()[]{}*+?\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

// The part of a module name after its last all-digit component
// ("model.layers.3.mlp.down_proj" -> "mlp.down_proj"); empty when none.
std::string repeated_suffix(const std::string& name) {
  std::string suffix;
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('.', start);
    if (end == std::string::npos) end = name.size();
    const std::string part = name.substr(start, end - start);
    if (!part.empty() && end < name.size() &&
        std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }))
      suffix = name.substr(end + 1);
    start = end + 1;
  }
  return suffix;
}

const char* type_name(Type t) { return t == Type::floating ? "float" : "int"; }

const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::channel: return "channel";
    case Strategy::group: return "group";
    case Strategy::tensor: return "tensor";
    case Strategy::token: return "token";
  }
  return "?";
}

// A QuantizationArgs object, every key compressed-tensors writes, in its order.
json args_json(Type type, int bits, bool sym, Strategy strategy, int64_t group_size, ActOrder order,
               bool dynamic, const char* observer) {
  const char* order_name = actorder_name(order);
  return {{"actorder", order_name ? json(order_name) : json(nullptr)},
          {"block_structure", nullptr},
          {"dynamic", dynamic},
          {"group_size", strategy == Strategy::group ? json(group_size) : json(nullptr)},
          {"num_bits", bits},
          {"observer", observer ? json(observer) : json(nullptr)},
          {"observer_kwargs", json::object()},
          {"scale_dtype", nullptr},
          {"strategy", strategy_name(strategy)},
          {"symmetric", sym},
          {"type", type_name(type)},
          {"zp_dtype", sym ? json(nullptr) : json("torch.int8")}};
}

json weights_args(const Scheme& s) {
  return args_json(s.type, s.num_bits, s.symmetric, s.strategy, s.group_size, s.actorder, false,
                   "memoryless_minmax");
}

// Dynamic inputs have no observer; static ones the FP8 preset's.
json input_args(const InputArgs& i) {
  const bool dynamic = i.strategy == Strategy::token;
  return args_json(i.type, 8, true, i.strategy, -1, ActOrder::none, dynamic,
                   dynamic ? nullptr : "static_minmax");
}

// "0.18.0", "0.17.1.dev3" -> {0, 18}; {-1, -1} when unparsable.
std::pair<int, int> major_minor(const std::string& v) {
  int major = -1, minor = -1;
  if (std::sscanf(v.c_str(), "%d.%d", &major, &minor) != 2) return {-1, -1};
  return {major, minor};
}

// A JSON value of `obj` at `key`, or null when absent.
const json& at_or_null(const json& obj, const std::string& key) {
  static const json null_value;
  const auto it = obj.find(key);
  return it == obj.end() ? null_value : *it;
}

// Refuses key `k` of the QuantizationArgs `a` at `where`, showing its value.
[[noreturn]] void bad_arg(const json& a, const std::string& where, const char* k, const std::string& why) {
  refuse(fmt::format("{}.{}: {} ({})", where, k, at_or_null(a, k).dump(), why));
}

// A QuantizationArgs object read with compressed-tensors' defaults (num_bits
// 8, int, symmetric, static, strategy inferred from group_size); only the
// JSON types and known spellings are checked here, what qforge runs by the
// callers.
struct Args {
  Type type = Type::integer;
  int64_t num_bits = 8;
  bool symmetric = true;
  bool dynamic = false;
  bool block = false;           // block_structure set
  std::optional<int64_t> group_size;
  std::string strategy;         // as written or inferred ("" when neither)
  ActOrder actorder = ActOrder::none;
};

Args parse_args(const json& a, const std::string& where) {
  if (!a.is_object()) refuse(where + ": must be an object");
  Args r;
  const json& type = at_or_null(a, "type");
  if (type == json("float")) r.type = Type::floating;
  else if (!type.is_null() && type != json("int")) bad_arg(a, where, "type", "\"int\" or \"float\"");
  const json& bits = at_or_null(a, "num_bits");
  if (!bits.is_null() && !bits.is_number_integer()) bad_arg(a, where, "num_bits", "an integer");
  if (bits.is_number_integer()) r.num_bits = bits.get<int64_t>();
  const json& sym = at_or_null(a, "symmetric");
  if (!sym.is_null() && !sym.is_boolean()) refuse(where + ".symmetric: must be true or false");
  r.symmetric = sym.is_null() || sym.get<bool>();
  const json& dynamic = at_or_null(a, "dynamic");
  if (!dynamic.is_null() && !dynamic.is_boolean()) bad_arg(a, where, "dynamic", "qforge reads true or false");
  r.dynamic = dynamic.is_boolean() && dynamic.get<bool>();
  r.block = !at_or_null(a, "block_structure").is_null();
  const json& gs = at_or_null(a, "group_size");
  if (!gs.is_null() && !gs.is_number_integer()) refuse(where + ".group_size: must be an integer");
  if (gs.is_number_integer()) r.group_size = gs.get<int64_t>();
  const json& st = at_or_null(a, "strategy");
  if (st.is_string()) {
    r.strategy = st.get<std::string>();
  } else if (st.is_null()) {  // compressed-tensors' inference
    r.strategy = !r.group_size ? "tensor" : *r.group_size > 0 ? "group" : *r.group_size == -1 ? "channel" : "";
  } else {
    bad_arg(a, where, "strategy", "must be a string");
  }
  const json& ao = at_or_null(a, "actorder");
  if (ao.is_null() || ao == json(false)) {
    r.actorder = ActOrder::none;
  } else if (ao == json(true) || ao == json("group") || ao == json("dynamic")) {
    r.actorder = ActOrder::group;
  } else if (ao == json("weight") || ao == json("static")) {
    r.actorder = ActOrder::weight;
  } else {
    refuse(fmt::format("{}.actorder: unknown value {}", where, ao.dump()));
  }
  return r;
}

void require_object(const json& w, const std::string& where) {
  if (!w.is_object())
    refuse(where + ": must be an object (a null weights means the linear is not weight-quantized)");
}

// pack-quantized weights: int, 2..8 bits, static, group or channel.
Scheme parse_pack_weights(const json& w, const std::string& where) {
  require_object(w, where);
  const Args a = parse_args(w, where);
  if (a.type != Type::integer) bad_arg(w, where, "type", "pack-quantized weights are int");
  if (a.num_bits < 2 || a.num_bits > 8) bad_arg(w, where, "num_bits", "qforge reads 2..8 bits");
  if (a.dynamic) bad_arg(w, where, "dynamic", "pack-quantized weights are static");
  if (a.block) refuse(where + ".block_structure: block quantization is not pack-quantized group/channel");
  Scheme s;
  s.num_bits = static_cast<int>(a.num_bits);
  s.symmetric = a.symmetric;
  const int64_t group_size = a.group_size.value_or(0);
  if (a.strategy == "group") {
    if (group_size <= 0) bad_arg(w, where, "group_size", "strategy group needs > 0");
    s.strategy = Strategy::group;
    s.group_size = group_size;
  } else if (a.strategy == "channel") {
    if (a.group_size && group_size != -1) bad_arg(w, where, "group_size", "strategy channel needs null or -1");
    s.strategy = Strategy::channel;
    s.group_size = -1;
  } else {
    bad_arg(w, where, "strategy", "qforge reads group and channel");
  }
  s.actorder = a.actorder;
  if (s.actorder != ActOrder::none && s.strategy != Strategy::group)
    refuse(where + ".actorder: needs strategy group");
  return s;
}

// Weights of the naive formats: 8-bit symmetric static channel or tensor.
Scheme parse_naive_weights(const json& w, const std::string& where) {
  require_object(w, where);
  const Args a = parse_args(w, where);
  if (a.num_bits != 8) bad_arg(w, where, "num_bits", "qforge reads 8-bit unpacked weights");
  if (!a.symmetric) bad_arg(w, where, "symmetric", "qforge reads symmetric unpacked weights");
  if (a.dynamic) bad_arg(w, where, "dynamic", "weights are static");
  if (a.block) refuse(where + ".block_structure: qforge reads channel and tensor weights");
  if (a.strategy != "channel" && a.strategy != "tensor")
    bad_arg(w, where, "strategy", "qforge reads channel and tensor unpacked weights");
  if (a.group_size && !(a.strategy == "channel" && *a.group_size == -1))
    bad_arg(w, where, "group_size", "strategy " + a.strategy + " has no groups");
  if (a.actorder != ActOrder::none) bad_arg(w, where, "actorder", "needs strategy group");
  Scheme s;
  s.type = a.type;
  s.num_bits = 8;
  s.strategy = a.strategy == "channel" ? Strategy::channel : Strategy::tensor;
  s.group_size = -1;
  return s;
}

// Input activations qforge runs: 8-bit symmetric, the weights' type, dynamic
// token or static tensor.
InputArgs parse_input(const json& i, const std::string& where, Type weights) {
  const Args a = parse_args(i, where);
  if (a.type != weights)
    bad_arg(i, where, "type", fmt::format("qforge runs inputs of the weights' type, \"{}\"", type_name(weights)));
  if (a.num_bits != 8) bad_arg(i, where, "num_bits", "qforge runs 8-bit input activations");
  if (!a.symmetric) bad_arg(i, where, "symmetric", "qforge runs symmetric input activations");
  if (a.block) refuse(where + ".block_structure: qforge runs token and tensor input activations");
  if (a.actorder != ActOrder::none) bad_arg(i, where, "actorder", "not for activations");
  if (a.strategy != "token" && a.strategy != "tensor")
    bad_arg(i, where, "strategy", "qforge runs token (dynamic) and tensor (static)");
  if (a.group_size) bad_arg(i, where, "group_size", "strategy " + a.strategy + " has no groups");
  const bool token = a.strategy == "token";
  if (a.dynamic != token)
    bad_arg(i, where, "dynamic",
            token ? "static token quantization is invalid" : "qforge runs per-tensor inputs static");
  return {weights, token ? Strategy::token : Strategy::tensor};
}

// The compression format named `v`; refuses others, naming `where`.
Format parse_format(const json& v, const std::string& where) {
  for (Format f : {Format::pack_quantized, Format::int_quantized, Format::float_quantized,
                   Format::naive_quantized})
    if (v == json(format_name(f))) return f;
  refuse(fmt::format("{}: {} (qforge reads pack-quantized, int-quantized, float-quantized and "
                     "naive-quantized)", where, v.dump()));
}

}  // namespace

const char* format_name(Format f) {
  switch (f) {
    case Format::pack_quantized: return QFORGE_CT_FORMAT_PACK_QUANTIZED;
    case Format::int_quantized: return QFORGE_CT_FORMAT_INT_QUANTIZED;
    case Format::float_quantized: return QFORGE_CT_FORMAT_FLOAT_QUANTIZED;
    case Format::naive_quantized: return QFORGE_CT_FORMAT_NAIVE_QUANTIZED;
  }
  return "?";
}

bool operator==(const InputArgs& a, const InputArgs& b) {
  return a.type == b.type && a.strategy == b.strategy;
}

bool operator==(const Scheme& a, const Scheme& b) {
  return a.format == b.format && a.type == b.type && a.num_bits == b.num_bits &&
         a.symmetric == b.symmetric && a.strategy == b.strategy && a.group_size == b.group_size &&
         a.actorder == b.actorder && a.input == b.input;
}

std::string describe(const Scheme& s) {
  if (naive(s))
    return fmt::format("{} W8 {} {}{}", format_name(s.format), type_name(s.type), strategy_name(s.strategy),
                       s.input ? fmt::format(", A8 {} {}", type_name(s.input->type),
                                             strategy_name(s.input->strategy))
                               : std::string());
  const char* order = actorder_name(s.actorder);
  return fmt::format("W{} {} {}{}", s.num_bits,
                     s.strategy == Strategy::group ? "g" + std::to_string(s.group_size) : "channel",
                     s.symmetric ? "sym" : "asym",
                     order ? std::string(" actorder=") + order : std::string());
}

// --------------------------------------------------------------- scheme_of --
Scheme scheme_of(const AffineLinear& l) {
  const int b = l.bits;
  if (b < 2 || b > 8) refuse(fmt::format("bits {} outside [2, 8]", b));
  const int64_t n = l.out_features, k = l.in_features;
  if (n < 1 || k < 1 || n > kMaxDim || k > kMaxDim)
    refuse(fmt::format("out_features {} / in_features {} must be in [1, 2^31)", n, k));
  const int64_t maxq = (int64_t{1} << b) - 1;
  expect("codes", l.codes, {at::kInt}, {n, k});
  check_range("codes", l.codes, 0, maxq);
  if (!l.scales.defined() || l.scales.dim() != 2) refuse("scales: expected float32 [groups, out]");
  const int64_t groups = l.scales.size(0);
  expect("scales", l.scales, {at::kFloat}, {groups, n});
  if (groups < 1) refuse("scales: no groups");
  if (!at::isfinite(l.scales).all().item<bool>()) refuse("scales: not all finite");
  expect("zeros", l.zeros, {at::kFloat}, {groups, n});
  if (!at::isfinite(l.zeros).all().item<bool>() || !l.zeros.eq(l.zeros.round()).all().item<bool>())
    refuse("zeros: compressed-tensors stores integer zero points only");
  if (l.zeros.lt(0).any().item<bool>() || l.zeros.gt(maxq).any().item<bool>())
    refuse(fmt::format("zeros: compressed-tensors needs zero points in [0, {}]", maxq));
  expect("g_idx", l.g_idx, {at::kInt}, {k});
  check_range("g_idx", l.g_idx, 0, groups - 1);

  Scheme s;
  s.num_bits = b;
  s.symmetric = l.symmetric;
  if (l.group_size == -1 || l.group_size >= k) {
    if (groups != 1) refuse(fmt::format("per-channel (group_size {}) but {} groups", l.group_size, groups));
    s.strategy = Strategy::channel;
    s.group_size = -1;
  } else {
    if (l.group_size < 1) refuse(fmt::format("group_size {} (must be -1 or > 0)", l.group_size));
    if (groups != ceil_div(k, l.group_size))
      refuse(fmt::format("{} groups, but in_features {} / group_size {} needs {}", groups, k,
                         l.group_size, ceil_div(k, l.group_size)));
    s.strategy = Strategy::group;
    s.group_size = l.group_size;
  }
  const at::Tensor g_idx = l.g_idx.contiguous();
  switch (classify(g_idx, groups, s.strategy == Strategy::group ? s.group_size : k)) {
    case GroupIndex::natural:
      s.actorder = l.act_order && s.strategy == Strategy::group ? ActOrder::weight : ActOrder::none;
      break;
    case GroupIndex::permuted:
      if (!l.act_order) refuse("g_idx is not j / group_size but act_order is false");
      s.actorder = ActOrder::group;
      break;
    case GroupIndex::invalid:
      refuse(fmt::format("g_idx: groups are not {} columns each (neither contiguous nor a permutation "
                         "of contiguous groups)", s.group_size));
  }
  if (l.symmetric && !l.zeros.eq(static_cast<double>(int64_t{1} << (b - 1))).all().item<bool>())
    refuse(fmt::format("symmetric claimed but not every zero is {}", int64_t{1} << (b - 1)));
  return s;
}

// --------------------------------------------------------------------- pack --
std::vector<std::pair<std::string, at::Tensor>> pack(const std::string& prefix, const AffineLinear& l,
                                                     at::ScalarType scale_dtype) {
  const Scheme s = scheme_of(l);
  if (scale_dtype != at::kHalf && scale_dtype != at::kBFloat16 && scale_dtype != at::kFloat)
    refuse(fmt::format("scale dtype {} (float16, bfloat16 or float32)", dtype_name(scale_dtype)));
  const int b = s.num_bits;
  const int64_t n = l.out_features, k = l.in_features, groups = l.scales.size(0);
  std::vector<std::pair<std::string, at::Tensor>> out;

  const at::Tensor codes = l.codes.contiguous();
  at::Tensor packed = at::empty({n, words_for(k, b)}, at::kInt);
  {
    const int32_t* src = codes.data_ptr<int32_t>();
    auto* dst = reinterpret_cast<uint32_t*>(packed.data_ptr<int32_t>());
    const int64_t w = packed.size(1);
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) pack_stream(src + r * k, k, b, dst + r * w);
    });
  }
  out.emplace_back(prefix + "." QFORGE_CT_WEIGHT_PACKED, packed);

  const at::Tensor scale = l.scales.t().contiguous().to(scale_dtype);
  if (!at::isfinite(scale).all().item<bool>())
    refuse(fmt::format("scales: beyond {}'s range", dtype_name(scale_dtype)));
  if (scale.eq(0).logical_and(l.scales.t().ne(0)).any().item<bool>())
    refuse(fmt::format("scales: a nonzero scale becomes 0 in {}", dtype_name(scale_dtype)));
  out.emplace_back(prefix + "." QFORGE_CT_WEIGHT_SCALE, scale);

  at::Tensor shape = at::empty({2}, at::kLong);
  shape[0] = n;
  shape[1] = k;
  out.emplace_back(prefix + "." QFORGE_CT_WEIGHT_SHAPE, shape);

  if (!s.symmetric) {
    const at::Tensor z = l.zeros.to(at::kInt).contiguous();  // [groups, n]
    at::Tensor zp = at::empty({groups, words_for(n, b)}, at::kInt);
    auto* dst = reinterpret_cast<uint32_t*>(zp.data_ptr<int32_t>());
    for (int64_t g = 0; g < groups; ++g)
      pack_stream(z.data_ptr<int32_t>() + g * n, n, b, dst + g * zp.size(1));
    out.emplace_back(prefix + "." QFORGE_CT_WEIGHT_ZERO_POINT, zp.t().contiguous());
  }
  if (s.actorder == ActOrder::group)
    out.emplace_back(prefix + "." QFORGE_CT_WEIGHT_G_IDX, l.g_idx.contiguous().clone());
  return out;
}

// ------------------------------------------------------------------- unpack --
AffineLinear unpack(const std::map<std::string, at::Tensor>& tensors, const Scheme& s) {
  check_scheme(s, "scheme");
  if (naive(s)) refuse(fmt::format("scheme: {} is not pack-quantized", describe(s)));
  auto get = [&](const char* name) {
    const auto it = tensors.find(name);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  const int b = s.num_bits;
  const at::Tensor shape = get(QFORGE_CT_WEIGHT_SHAPE);
  if (!shape.defined()) refuse(QFORGE_CT_WEIGHT_SHAPE ": missing");
  expect(QFORGE_CT_WEIGHT_SHAPE, shape, {at::kLong, at::kInt}, {2});
  const int64_t n = shape[0].item<int64_t>(), k = shape[1].item<int64_t>();
  if (n < 1 || k < 1 || n > kMaxDim || k > kMaxDim)
    refuse(fmt::format(QFORGE_CT_WEIGHT_SHAPE ": [{}, {}] must be in [1, 2^31)", n, k));
  const int64_t groups = s.strategy == Strategy::group ? ceil_div(k, s.group_size) : 1;

  const at::Tensor packed = get(QFORGE_CT_WEIGHT_PACKED);
  expect(QFORGE_CT_WEIGHT_PACKED, packed, {at::kInt}, {n, words_for(k, b)});
  const at::Tensor scale = get(QFORGE_CT_WEIGHT_SCALE);
  expect(QFORGE_CT_WEIGHT_SCALE, scale, {at::kHalf, at::kBFloat16, at::kFloat}, {n, groups});
  if (!at::isfinite(scale).all().item<bool>()) refuse(QFORGE_CT_WEIGHT_SCALE ": not all finite");
  const at::Tensor zp = get(QFORGE_CT_WEIGHT_ZERO_POINT);
  if (s.symmetric && zp.defined()) refuse(QFORGE_CT_WEIGHT_ZERO_POINT ": present, but the scheme is symmetric");
  if (!s.symmetric) expect(QFORGE_CT_WEIGHT_ZERO_POINT, zp, {at::kInt}, {words_for(n, b), groups});
  const at::Tensor gi = get(QFORGE_CT_WEIGHT_G_IDX);
  if (s.actorder != ActOrder::group && gi.defined())
    refuse(QFORGE_CT_WEIGHT_G_IDX ": present, but actorder is not \"group\"");

  AffineLinear l;
  l.bits = b;
  l.out_features = n;
  l.in_features = k;
  l.group_size = s.strategy == Strategy::group ? s.group_size : -1;
  l.symmetric = s.symmetric;
  l.act_order = s.actorder != ActOrder::none;
  if (s.actorder == ActOrder::group) {
    expect(QFORGE_CT_WEIGHT_G_IDX, gi, {at::kInt}, {k});
    l.g_idx = gi.contiguous().clone();
    check_range(QFORGE_CT_WEIGHT_G_IDX, l.g_idx, 0, groups - 1);
    if (classify(l.g_idx, groups, s.group_size) == GroupIndex::invalid)
      refuse(fmt::format(QFORGE_CT_WEIGHT_G_IDX ": groups are not {} columns each", s.group_size));
  } else {
    l.g_idx = s.strategy == Strategy::group
                  ? at::arange(k, at::kInt).div(s.group_size, "floor").to(at::kInt)
                  : at::zeros({k}, at::kInt);
  }

  l.codes = at::empty({n, k}, at::kInt);
  {
    const at::Tensor p = packed.contiguous();
    const auto* src = reinterpret_cast<const uint32_t*>(p.data_ptr<int32_t>());
    int32_t* dst = l.codes.data_ptr<int32_t>();
    const int64_t w = p.size(1);
    at::parallel_for(0, n, 64, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < k; ++j) dst[r * k + j] = stream_code(src + r * w, 1, j, b);
    });
  }
  l.scales = scale.to(at::kFloat).t().contiguous();
  if (s.symmetric) {
    l.zeros = at::full({groups, n}, static_cast<float>(1 << (b - 1)), at::kFloat);
  } else {
    const at::Tensor z = zp.contiguous();
    const auto* src = reinterpret_cast<const uint32_t*>(z.data_ptr<int32_t>());
    at::Tensor zeros = at::empty({groups, n}, at::kInt);
    int32_t* dst = zeros.data_ptr<int32_t>();
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t r = 0; r < n; ++r) dst[g * n + r] = stream_code(src + g, groups, r, b);
    l.zeros = zeros.to(at::kFloat);
  }
  return l;
}

// -------------------------------------------------------------------- naive --
namespace {

// `what` (float32) holds finite scales > 0.
void check_scales(const std::string& what, const at::Tensor& s) {
  const at::Tensor ok = s.gt(0).logical_and(at::isfinite(s));
  if (!ok.all().item<bool>())
    refuse(fmt::format("{}: {} (scales must be finite and > 0)", what,
                       s.masked_select(ok.logical_not())[0].item<float>()));
}

// What compressed-tensors names a naive linear's format (§4.1).
Format naive_format(Type type, bool input) {
  return type == Type::integer ? Format::int_quantized
                               : input ? Format::float_quantized : Format::naive_quantized;
}

// `l`'s tensors against its scheme: dtypes, shapes, codes, scales.
void check_naive(const NaiveLinear& l) {
  const Scheme& s = l.scheme;
  if (!naive(s)) refuse(fmt::format("scheme: {} is not an unpacked format", describe(s)));
  check_scheme(s, "scheme");
  const bool fp = s.type == Type::floating;
  if (!l.weight.defined() || l.weight.dim() != 2) refuse(QFORGE_CT_WEIGHT ": expected [out_features, in_features]");
  const int64_t n = l.weight.size(0), k = l.weight.size(1);
  if (n < 1 || k < 1 || n > kMaxDim || k > kMaxDim)
    refuse(fmt::format(QFORGE_CT_WEIGHT ": [{}, {}] must be in [1, 2^31)", n, k));
  expect(QFORGE_CT_WEIGHT, l.weight, {fp ? at::kByte : at::kChar}, {n, k});
  if (fp && l.weight.bitwise_and(0x7F).eq(0x7F).any().item<bool>())
    refuse(QFORGE_CT_WEIGHT ": E4M3 NaN codes (0x7F, 0xFF)");
  expect(QFORGE_CT_NAIVE_WEIGHT_SCALE, l.weight_scale, {at::kFloat},
         s.strategy == Strategy::channel ? std::vector<int64_t>{n, 1} : std::vector<int64_t>{1});
  check_scales(QFORGE_CT_NAIVE_WEIGHT_SCALE, l.weight_scale);
  if (s.input && s.input->strategy == Strategy::tensor) {
    expect(QFORGE_CT_INPUT_SCALE, l.input_scale, {at::kFloat}, {1});
    check_scales(QFORGE_CT_INPUT_SCALE, l.input_scale);
  } else if (l.input_scale.defined()) {
    refuse(QFORGE_CT_INPUT_SCALE ": present, but the input activations are not static");
  }
}

}  // namespace

NaiveLinear naive_linear(const std::string& metadata, const std::map<std::string, at::Tensor>& tensors) {
  const json m = json::parse(metadata, nullptr, false);
  if (!m.is_object()) refuse("metadata: not a JSON object");
  NaiveLinear l;
  l.scheme = parse_naive_weights(at_or_null(m, QFORGE_CT_META_WEIGHTS), "metadata." QFORGE_CT_META_WEIGHTS);
  const json& input = at_or_null(m, QFORGE_CT_META_INPUT_ACTIVATIONS);
  if (!input.is_null())
    l.scheme.input = parse_input(input, "metadata." QFORGE_CT_META_INPUT_ACTIVATIONS, l.scheme.type);
  l.scheme.format = naive_format(l.scheme.type, l.scheme.input.has_value());
  auto get = [&](const char* name) {
    const auto it = tensors.find(name);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  int64_t dims[2];  // out_features, in_features
  for (int i = 0; i < 2; ++i) {
    const char* key = i == 0 ? QFORGE_CT_META_OUT_FEATURES : QFORGE_CT_META_IN_FEATURES;
    const json& v = at_or_null(m, key);
    dims[i] = v.is_number_integer() ? v.get<int64_t>() : 0;
    if (dims[i] < 1 || dims[i] > kMaxDim)
      refuse(fmt::format("metadata.{}: {} (an integer in [1, 2^31))", key, v.dump()));
  }
  l.weight = get(QFORGE_CT_WEIGHT);
  if (l.weight.defined() && l.weight.sizes() != at::IntArrayRef(dims))
    refuse(fmt::format(QFORGE_CT_WEIGHT ": {} is not [out_features, in_features] = [{}, {}] of the metadata",
                       shape_str(l.weight), dims[0], dims[1]));
  l.weight_scale = get(QFORGE_CT_NAIVE_WEIGHT_SCALE);
  l.input_scale = get(QFORGE_CT_INPUT_SCALE);
  check_naive(l);
  return l;
}

json naive_metadata(const NaiveLinear& l) {
  const Scheme& s = l.scheme;
  auto args = [](Type type, Strategy strategy) {
    return json{{QFORGE_CT_META_NUM_BITS, 8}, {QFORGE_CT_META_TYPE, type_name(type)},
                {QFORGE_CT_META_SYMMETRIC, true}, {QFORGE_CT_META_STRATEGY, strategy_name(strategy)}};
  };
  json input = nullptr;
  if (s.input) {
    input = args(s.input->type, s.input->strategy);
    input[QFORGE_CT_META_DYNAMIC] = s.input->strategy == Strategy::token;
  }
  return {{QFORGE_CT_META_WEIGHTS, args(s.type, s.strategy)},
          {QFORGE_CT_META_INPUT_ACTIVATIONS, input},
          {QFORGE_CT_META_IN_FEATURES, l.weight.size(1)},
          {QFORGE_CT_META_OUT_FEATURES, l.weight.size(0)}};
}

AffineLinear to_affine(const NaiveLinear& l) {
  check_naive(l);
  if (l.scheme.type != Type::integer || l.scheme.input)
    refuse(fmt::format("{} is not int weights alone", describe(l.scheme)));
  const int64_t n = l.weight.size(0), k = l.weight.size(1);
  AffineLinear a;
  a.bits = 8;
  a.out_features = n;
  a.in_features = k;
  a.codes = l.weight.to(at::kInt) + 128;
  a.scales = l.weight_scale.reshape({-1}).expand({n}).reshape({1, n}).contiguous();
  a.zeros = at::full({1, n}, 128.f, at::kFloat);
  a.g_idx = at::zeros({k}, at::kInt);
  a.group_size = -1;
  return a;
}

std::vector<std::pair<std::string, at::Tensor>> pack(const std::string& prefix, const NaiveLinear& l) {
  check_naive(l);
  std::vector<std::pair<std::string, at::Tensor>> out;
  const at::Tensor w = l.weight.contiguous();
  out.emplace_back(prefix + "." QFORGE_CT_WEIGHT, l.scheme.type == Type::floating ? as_f8_e4m3(w) : w);
  auto add_half = [&](const char* name, const at::Tensor& t) {
    const at::Tensor h = t.to(at::kHalf).contiguous();
    const at::Tensor off = h.to(at::kFloat).ne(t);
    if (off.any().item<bool>())
      refuse(fmt::format("{}: {} is not a float16 number (compressed-tensors files hold float16 "
                         "scales)", name, t.masked_select(off)[0].item<float>()));
    out.emplace_back(prefix + "." + name, h);
  };
  add_half(QFORGE_CT_NAIVE_WEIGHT_SCALE, l.weight_scale);
  if (l.input_scale.defined()) add_half(QFORGE_CT_INPUT_SCALE, l.input_scale);
  return out;
}

NaiveLinear unpack_naive(const std::map<std::string, at::Tensor>& tensors, const Scheme& s) {
  if (!naive(s)) refuse(fmt::format("scheme: {} is not an unpacked format", describe(s)));
  check_scheme(s, "scheme");
  auto get = [&](const char* name) {
    const auto it = tensors.find(name);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  for (const char* stray : {QFORGE_CT_WEIGHT_ZERO_POINT, QFORGE_CT_WEIGHT_G_IDX, "input_zero_point"})
    if (get(stray).defined()) refuse(fmt::format("{}: present, but the scheme is {}", stray, describe(s)));
  NaiveLinear l;
  l.scheme = s;
  l.weight = get(QFORGE_CT_WEIGHT);
  if (!l.weight.defined()) refuse(QFORGE_CT_WEIGHT ": missing");
  const StDtype want = s.type == Type::floating ? StDtype::F8_E4M3 : StDtype::I8;
  if (st_dtype_of(l.weight) != want || l.weight.dim() != 2)
    refuse(fmt::format(QFORGE_CT_WEIGHT ": expected {} [out_features, in_features] ({} weights), got {} {}",
                       st_dtype_name(want), type_name(s.type), st_dtype_name(st_dtype_of(l.weight)),
                       shape_str(l.weight)));
  const int64_t n = l.weight.size(0);
  // Float scales of one of `shapes`, as float32 shaped `to`.
  auto scale = [&](const char* name, std::initializer_list<std::vector<int64_t>> shapes,
                   std::vector<int64_t> to) {
    const at::Tensor t = get(name);
    if (!t.defined()) refuse(std::string(name) + ": missing");
    const auto dtype = t.scalar_type();
    const bool shape_ok = std::any_of(shapes.begin(), shapes.end(),
                                      [&](const auto& sh) { return t.sizes() == at::IntArrayRef(sh); });
    if ((dtype != at::kHalf && dtype != at::kBFloat16 && dtype != at::kFloat) || !shape_ok) {
      std::vector<std::string> want_shapes;
      for (const auto& sh : shapes) want_shapes.push_back(fmt::format("[{}]", fmt::join(sh, ", ")));
      refuse(fmt::format("{}: expected float16|bfloat16|float32 {}, got {} {}", name,
                         fmt::join(want_shapes, " or "), dtype_name(dtype), shape_str(t)));
    }
    return t.to(at::kFloat).reshape(to);
  };
  l.weight_scale = s.strategy == Strategy::channel ? scale(QFORGE_CT_NAIVE_WEIGHT_SCALE, {{n, 1}, {n}}, {n, 1})
                                                   : scale(QFORGE_CT_NAIVE_WEIGHT_SCALE, {{1}, {}}, {1});
  l.input_scale = s.input && s.input->strategy == Strategy::tensor
                      ? scale(QFORGE_CT_INPUT_SCALE, {{1}, {}}, {1})
                      : get(QFORGE_CT_INPUT_SCALE);  // refused by check_naive when present
  check_naive(l);
  return l;
}

// ------------------------------------------------------------- sparsity --
namespace {

// "N:M" (0 < N < M <= 64) as {N, M}, "unstructured" as {0, 0}; refused otherwise.
std::pair<int, int> parse_structure(const std::string& s) {
  if (s == "unstructured") return {0, 0};
  int n = 0, m = 0, used = 0;
  if (std::sscanf(s.c_str(), "%d:%d%n", &n, &m, &used) == 2 && used == static_cast<int>(s.size()) &&
      s.find_first_of(" +-") == std::string::npos && 0 < n && n < m && m <= 64)
    return {n, m};
  refuse(fmt::format("sparsity_structure \"{}\": expected \"N:M\" (0 < N < M <= 64) or "
                     "\"unstructured\"", s));
}

// The fused siblings of `name` (q/k/v_proj, gate/up_proj of one module).
std::vector<std::string> fused_siblings(const std::string& name) {
  const size_t dot = name.rfind('.');
  const std::string parent = dot == std::string::npos ? "" : name.substr(0, dot + 1);
  const std::string leaf = name.substr(parent.size());
  std::vector<std::string> out;
  for (const auto& shards : kFusedShards)
    if (std::find(shards.begin(), shards.end(), leaf) != shards.end())
      for (const auto& other : shards)
        if (other != leaf) out.push_back(parent + other);
  return out;
}

}  // namespace

Sparsity sparsity_of(const at::Tensor& is_zero, const std::string& structure) {
  const auto [n, m] = parse_structure(structure);
  if (is_zero.scalar_type() != at::kBool || is_zero.dim() != 2)
    refuse("sparsity_of: expected a bool [out, in] mask");
  Sparsity s{structure, is_zero.sum().item<int64_t>(), is_zero.numel()};
  if (m == 0) return s;
  const int64_t out = is_zero.size(0), in = is_zero.size(1);
  if (in % m != 0)
    refuse(fmt::format("claims {} sparsity, but its input width {} is not a multiple of {}",
                       structure, in, m));
  const at::Tensor per_group = is_zero.reshape({out, in / m, m}).sum(2);
  const at::Tensor bad = per_group.lt(n).nonzero();
  if (bad.size(0) > 0) {
    const int64_t r = bad[0][0].item<int64_t>(), g = bad[0][1].item<int64_t>();
    refuse(fmt::format("claims {} sparsity, but row {}, inputs [{}, {}) hold {} zeros", structure,
                       r, g * m, g * m + m, per_group[r][g].item<int64_t>()));
  }
  return s;
}

ordered_json sparsity_config(const std::vector<std::pair<std::string, Sparsity>>& targets,
                             const std::vector<std::string>& ignore) {
  if (targets.empty()) return ordered_json::object();
  std::map<std::string, const Sparsity*> by_name;
  int64_t zeros = 0, numel = 0;
  for (const auto& [name, s] : targets) {
    parse_structure(s.structure);
    if (!by_name.emplace(name, &s).second) refuse(name + ": listed twice in sparsity_config");
    if (ignored(ignore, name, "sparsity_config.ignore"))
      refuse(name + ": both a sparsity target and ignored");
    zeros += s.zeros;
    numel += s.numel;
  }
  // vLLM fuses these shards into one layer: one sparsity for all of them.
  for (const auto& [name, s] : targets)
    for (const auto& sibling : fused_siblings(name)) {
      if (ignored(ignore, sibling, "sparsity_config.ignore"))
        refuse(fmt::format("{} is pruned but {} is not; vLLM fuses them and needs one sparsity",
                           name, sibling));
      const auto it = by_name.find(sibling);
      if (it != by_name.end() && it->second->structure != s.structure)
        refuse(fmt::format("{} ({}) and {} ({}) differ; vLLM fuses them and needs one sparsity",
                           name, s.structure, sibling, it->second->structure));
    }
  std::string structure = targets.front().second.structure;
  for (const auto& [name, s] : targets)
    if (s.structure != structure) structure = "unstructured";  // no one pattern holds for all
  json names = json::array();
  for (const auto& [name, s] : targets) names.push_back(name);
  const json c = {{"format", "dense"},
                  {"global_sparsity", numel > 0 ? static_cast<double>(zeros) / numel : 0.0},
                  {"ignore", ignore},
                  {"registry_requires_subclass", false},
                  {"sparsity_structure", structure},
                  {"targets", names}};
  return ordered_json::parse(c.dump());
}

// ------------------------------------------------------ quantization_config --
namespace {

// The quantization_config object around its config groups. nlohmann::json
// keeps keys sorted, as Python's json.dumps(sort_keys=True).
ordered_json config_object(const json& config_groups, const std::string& format,
                           const std::vector<std::string>& ignore, const ordered_json& sparsity) {
  const json q = {{"config_groups", config_groups},
                  {"format", format},
                  {"global_compression_ratio", nullptr},
                  {"ignore", ignore},
                  {"kv_cache_scheme", nullptr},
                  {"quant_method", "compressed-tensors"},
                  {"quantization_status", "compressed"},
                  {"sparsity_config", json::parse(sparsity.dump())},
                  {"transform_config", json::object()},
                  {"version", QFORGE_CT_WRITER_VERSION}};
  return ordered_json::parse(q.dump());
}

}  // namespace

ordered_json quantization_config(const std::vector<std::pair<std::string, Scheme>>& layers,
                                 const std::vector<std::string>& ignore,
                                 const ordered_json& sparsity) {
  const std::string where = "ignore";
  if (layers.empty()) {
    if (sparsity.empty()) refuse("quantization_config: no quantized layers");
    // Pruned, not quantized: no config group, every linear ignored.
    return config_object(json::object(), "dense", ignore, sparsity);
  }
  std::map<std::string, const Scheme*> scheme_of_name;
  for (const auto& [name, s] : layers) {
    check_scheme(s, name);
    if (!scheme_of_name.emplace(name, &s).second) refuse(name + ": listed twice");
    if (ignored(ignore, name, where)) refuse(name + ": both quantized and in ignore");
  }
  // vLLM fuses these shards into one layer: one scheme, one ignore status.
  for (const auto& [name, s] : layers) {
    const size_t dot = name.rfind('.');
    const std::string parent = dot == std::string::npos ? "" : name.substr(0, dot + 1);
    const std::string leaf = name.substr(parent.size());
    for (const auto& shards : kFusedShards) {
      if (std::find(shards.begin(), shards.end(), leaf) == shards.end()) continue;
      for (const auto& other : shards) {
        const std::string sibling = parent + other;
        if (sibling == name) continue;
        if (ignored(ignore, sibling, where))
          refuse(fmt::format("{} is quantized but {} is ignored; vLLM fuses them and needs one scheme",
                             name, sibling));
        const auto it = scheme_of_name.find(sibling);
        if (it != scheme_of_name.end() && *it->second != s)
          refuse(fmt::format("{} ({}) and {} ({}) differ; vLLM fuses them and needs one scheme", name,
                             describe(s), sibling, describe(*it->second)));
      }
    }
  }
  // One group per scheme, in order of first appearance.
  std::vector<std::pair<Scheme, std::vector<std::string>>> groups;
  for (const auto& [name, s] : layers) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == s; });
    if (it == groups.end()) it = groups.insert(groups.end(), {s, {}});
    it->second.push_back(name);
  }
  json config_groups = json::object();
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& [scheme, names] = groups[i];
    json targets = json::array();
    if (groups.size() == 1) {
      targets.push_back("Linear");
    } else {
      // A suffix regex ("re:.*\.mlp\.down_proj$") when it matches exactly this
      // group's layers among all layers; exact names otherwise.
      // (The regex matches exactly the names ending in "." + suffix.)
      std::map<std::string, bool> regex_ok;  // suffix -> the regex is exact
      for (const auto& name : names) {
        const std::string suffix = repeated_suffix(name);
        if (suffix.empty()) {
          targets.push_back(name);
          continue;
        }
        auto [it, first] = regex_ok.emplace(suffix, true);
        if (first) {
          const std::string tail = "." + suffix;
          for (const auto& [other, s] : layers) {
            const bool hit = other.size() >= tail.size() &&
                             other.compare(other.size() - tail.size(), tail.size(), tail) == 0;
            if (hit && s != scheme) it->second = false;
          }
          if (it->second) targets.push_back("re:.*\\." + escape_regex(suffix) + "$");
        }
        if (!it->second) targets.push_back(name);
      }
    }
    config_groups["group_" + std::to_string(i)] = {
        {"format", format_name(scheme.format)},
        {"input_activations", scheme.input ? input_args(*scheme.input) : json(nullptr)},
        {"output_activations", nullptr},
        {"targets", targets},
        {"weights", weights_args(scheme)}};
  }
  const bool mixed = std::any_of(groups.begin(), groups.end(), [&](const auto& g) {
    return g.first.format != groups.front().first.format;
  });
  return config_object(config_groups,
                       mixed ? "mixed-precision" : format_name(groups.front().first.format), ignore,
                       sparsity);
}

// ------------------------------------------------------------- parse_scheme --
namespace {

const std::string kQc = "quantization_config";

// The top-level keys of a quantization_config qforge reads; its config_groups.
const json& check_config(const json& q) {
  const std::string& qc = kQc;
  if (!q.is_object()) refuse(qc + ": must be an object");
  const json& method = at_or_null(q, "quant_method");
  if (method != json("compressed-tensors"))
    refuse(fmt::format("{}.quant_method: {} (not compressed-tensors)", qc, method.dump()));
  const json& status = at_or_null(q, "quantization_status");
  if (!status.is_null() && status != json("compressed"))
    refuse(fmt::format("{}.quantization_status: {} (only \"compressed\" checkpoints are packed)", qc,
                       status.dump()));
  const json& transform = at_or_null(q, "transform_config");
  if (!transform.is_null() && transform != json::object())
    refuse(qc + ".transform_config: transforms (rotations) are not supported");
  const json& sparsity = at_or_null(q, "sparsity_config");
  if (!sparsity.is_null() && sparsity != json::object() &&
      at_or_null(sparsity, "format") != json("dense"))
    refuse(qc + ".sparsity_config: sparse formats are not supported");
  const json& cg = at_or_null(q, "config_groups");
  if (!cg.is_object()) refuse(qc + ".config_groups: must be an object");
  return cg;
}

// The scheme of config group `key`.
Scheme parse_group(const json& q, const std::string& key) {
  const std::string where = kQc + ".config_groups." + key;
  const json& group = q.at("config_groups").at(key);
  if (!group.is_object()) refuse(where + ": must be an object (preset lists are not supported)");
  const json& gfmt = at_or_null(group, "format");
  const Format format = gfmt.is_null() ? parse_format(at_or_null(q, "format"), kQc + ".format")
                                       : parse_format(gfmt, where + ".format");
  if (!at_or_null(group, "output_activations").is_null())
    refuse(where + ".output_activations: quantized outputs are not supported");
  const json& input = at_or_null(group, "input_activations");
  Scheme s;
  if (format == Format::pack_quantized) {
    if (!input.is_null())
      refuse(where + ".input_activations: pack-quantized with quantized activations is not supported");
    s = parse_pack_weights(at_or_null(group, "weights"), where + ".weights");
  } else {
    s = parse_naive_weights(at_or_null(group, "weights"), where + ".weights");
    if (!input.is_null()) s.input = parse_input(input, where + ".input_activations", s.type);
  }
  s.format = format;
  const int b = s.num_bits;
  if (s.format == Format::pack_quantized && b != 2 && b != 4 && b != 8) {
    const json& version = at_or_null(q, "version");
    const auto [major, minor] = version.is_string() ? major_minor(version.get<std::string>())
                                                    : std::pair<int, int>{-1, -1};
    const auto [min_major, min_minor] = major_minor(QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION);
    if (major < 0 || std::make_pair(major, minor) < std::make_pair(min_major, min_minor))
      refuse(fmt::format("{}.version: {}; {}-bit pack-quantized before compressed-tensors {} packs "
                         "floor(32/{}) codes per word, which qforge does not read",
                         kQc, version.dump(), b, QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION, b));
  }
  return s;
}

}  // namespace

std::vector<Scheme> group_schemes(const json& q) {
  std::vector<Scheme> out;
  for (const auto& [key, group] : check_config(q).items()) out.push_back(parse_group(q, key));
  return out;
}

std::optional<Scheme> parse_scheme(const json& q, const std::string& linear_name) {
  const std::string& qc = kQc;
  const json& cg = check_config(q);
  const json& ignore = at_or_null(q, "ignore");
  if (!ignore.is_null() && !ignore.is_array()) refuse(qc + ".ignore: must be a list");
  if (ignore.is_array())
    for (const auto& t : ignore) {
      if (!t.is_string()) refuse(qc + ".ignore: entries must be strings");
      if (match(t.get<std::string>(), linear_name, qc + ".ignore") != Match::none) return std::nullopt;
    }

  // The best-matching groups: by name (exact or regex) before class name.
  Match best = Match::none;
  std::vector<std::string> matched;
  for (const auto& [key, group] : cg.items()) {
    const std::string where = qc + ".config_groups." + key;
    if (!group.is_object()) refuse(where + ": must be an object (preset lists are not supported)");
    const json& targets = at_or_null(group, "targets");
    if (!targets.is_array()) refuse(where + ".targets: must be a list");
    Match m = Match::none;
    for (const auto& t : targets) {
      if (!t.is_string()) refuse(where + ".targets: entries must be strings");
      m = std::max(m, match(t.get<std::string>(), linear_name, where + ".targets"));
    }
    if (m == Match::none || m < best) continue;
    if (m > best) matched.clear();
    best = m;
    matched.push_back(key);
  }
  if (matched.empty()) return std::nullopt;

  std::optional<Scheme> result;
  for (const auto& key : matched) {
    const Scheme s = parse_group(q, key);
    if (result && *result != s)
      refuse(fmt::format("{}: {} matches two config groups with different schemes", qc, linear_name));
    result = s;
  }
  return result;
}

}  // namespace qforge::host::ct
