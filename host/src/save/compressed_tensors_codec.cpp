// compressed-tensors pack-quantized codec; see compressed_tensors_codec.hpp
// and <qforge/formats/ct_pack_quantized_v1.h> (the layout).
#include "compressed_tensors_codec.hpp"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <qforge/formats/ct_pack_quantized_v1.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <regex>
#include <string_view>

#include "qforge_host/base/errors.hpp"

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

void check_scheme(const Scheme& s, const std::string& where) {
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

json weights_args(const Scheme& s) {
  json w;
  const char* order = actorder_name(s.actorder);
  w["actorder"] = order ? json(order) : json(nullptr);
  w["block_structure"] = nullptr;
  w["dynamic"] = false;
  w["group_size"] = s.strategy == Strategy::group ? json(s.group_size) : json(nullptr);
  w["num_bits"] = s.num_bits;
  w["observer"] = "memoryless_minmax";
  w["observer_kwargs"] = json::object();
  w["scale_dtype"] = nullptr;
  w["strategy"] = s.strategy == Strategy::group ? "group" : "channel";
  w["symmetric"] = s.symmetric;
  w["type"] = "int";
  w["zp_dtype"] = s.symmetric ? json(nullptr) : json("torch.int8");
  return w;
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

Scheme parse_weights(const json& w, const std::string& where) {
  if (!w.is_object())
    refuse(where + ": must be an object (a null weights means the linear is not weight-quantized)");
  auto key = [&](const char* k) { return where + "." + k; };
  const json& type = at_or_null(w, "type");
  if (!type.is_null() && !(type.is_string() && type.get<std::string>() == "int"))
    refuse(fmt::format("{}: {} (qforge reads int weights only)", key("type"), type.dump()));
  Scheme s;
  const json& bits = at_or_null(w, "num_bits");
  s.num_bits = bits.is_null() ? 8 : bits.is_number_integer() ? bits.get<int>() : -1;
  if (s.num_bits < 2 || s.num_bits > 8)
    refuse(fmt::format("{}: {} (qforge reads 2..8 bits)", key("num_bits"), bits.dump()));
  const json& sym = at_or_null(w, "symmetric");
  if (!sym.is_null() && !sym.is_boolean()) refuse(key("symmetric") + ": must be true or false");
  s.symmetric = sym.is_null() || sym.get<bool>();
  const json& dynamic = at_or_null(w, "dynamic");
  if (!dynamic.is_null() && dynamic != json(false))
    refuse(fmt::format("{}: {} (pack-quantized weights are static)", key("dynamic"), dynamic.dump()));
  if (!at_or_null(w, "block_structure").is_null())
    refuse(key("block_structure") + ": block quantization is not pack-quantized group/channel");
  const json& gs = at_or_null(w, "group_size");
  if (!gs.is_null() && !gs.is_number_integer()) refuse(key("group_size") + ": must be an integer");
  const int64_t group_size = gs.is_null() ? 0 : gs.get<int64_t>();
  const json& st = at_or_null(w, "strategy");
  std::string strategy;
  if (st.is_string()) {
    strategy = st.get<std::string>();
  } else if (st.is_null()) {  // compressed-tensors' inference
    strategy = gs.is_null() ? "tensor" : group_size > 0 ? "group" : group_size == -1 ? "channel" : "";
  }
  if (strategy == "group") {
    if (group_size <= 0) refuse(fmt::format("{}: {} (strategy group needs > 0)", key("group_size"), gs.dump()));
    s.strategy = Strategy::group;
    s.group_size = group_size;
  } else if (strategy == "channel") {
    if (!gs.is_null() && group_size != -1)
      refuse(fmt::format("{}: {} (strategy channel needs null or -1)", key("group_size"), gs.dump()));
    s.strategy = Strategy::channel;
    s.group_size = -1;
  } else {
    refuse(fmt::format("{}: {} (qforge reads group and channel)", key("strategy"), st.dump()));
  }
  const json& ao = at_or_null(w, "actorder");
  if (ao.is_null() || ao == json(false)) {
    s.actorder = ActOrder::none;
  } else if (ao == json(true) || ao == json("group") || ao == json("dynamic")) {
    s.actorder = ActOrder::group;
  } else if (ao == json("weight") || ao == json("static")) {
    s.actorder = ActOrder::weight;
  } else {
    refuse(fmt::format("{}: unknown value {}", key("actorder"), ao.dump()));
  }
  if (s.actorder != ActOrder::none && s.strategy != Strategy::group)
    refuse(key("actorder") + ": needs strategy group");
  return s;
}

}  // namespace

bool operator==(const Scheme& a, const Scheme& b) {
  return a.num_bits == b.num_bits && a.symmetric == b.symmetric && a.strategy == b.strategy &&
         a.group_size == b.group_size && a.actorder == b.actorder;
}

std::string describe(const Scheme& s) {
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

// ------------------------------------------------------ quantization_config --
ordered_json quantization_config(const std::vector<std::pair<std::string, Scheme>>& layers,
                                 const std::vector<std::string>& ignore) {
  if (layers.empty()) refuse("quantization_config: no quantized layers");
  const std::string where = "ignore";
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
    config_groups["group_" + std::to_string(i)] = {{"format", QFORGE_CT_FORMAT_PACK_QUANTIZED},
                                                   {"input_activations", nullptr},
                                                   {"output_activations", nullptr},
                                                   {"targets", targets},
                                                   {"weights", weights_args(scheme)}};
  }
  // nlohmann::json keeps keys sorted, as Python's json.dumps(sort_keys=True).
  const json q = {{"config_groups", config_groups},
                  {"format", QFORGE_CT_FORMAT_PACK_QUANTIZED},
                  {"global_compression_ratio", nullptr},
                  {"ignore", ignore},
                  {"kv_cache_scheme", nullptr},
                  {"quant_method", "compressed-tensors"},
                  {"quantization_status", "compressed"},
                  {"sparsity_config", json::object()},
                  {"transform_config", json::object()},
                  {"version", QFORGE_CT_WRITER_VERSION}};
  return ordered_json::parse(q.dump());
}

// ------------------------------------------------------------- parse_scheme --
std::optional<Scheme> parse_scheme(const json& q, const std::string& linear_name) {
  const std::string qc = "quantization_config";
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

  const json& ignore = at_or_null(q, "ignore");
  if (!ignore.is_null() && !ignore.is_array()) refuse(qc + ".ignore: must be a list");
  if (ignore.is_array())
    for (const auto& t : ignore) {
      if (!t.is_string()) refuse(qc + ".ignore: entries must be strings");
      if (match(t.get<std::string>(), linear_name, qc + ".ignore") != Match::none) return std::nullopt;
    }

  const json& cg = at_or_null(q, "config_groups");
  if (!cg.is_object()) refuse(qc + ".config_groups: must be an object");
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
    const std::string where = qc + ".config_groups." + key;
    const json& group = cg.at(key);
    const json& gfmt = at_or_null(group, "format");
    const json& fmt_value = gfmt.is_null() ? at_or_null(q, "format") : gfmt;
    if (fmt_value != json(QFORGE_CT_FORMAT_PACK_QUANTIZED))
      refuse(fmt::format("{}: {} (qforge reads pack-quantized)", gfmt.is_null() ? qc + ".format" : where + ".format",
                         fmt_value.dump()));
    for (const char* a : {"input_activations", "output_activations"})
      if (!at_or_null(group, a).is_null())
        refuse(fmt::format("{}.{}: quantized activations are not supported", where, a));
    const Scheme s = parse_weights(at_or_null(group, "weights"), where + ".weights");
    if (result && *result != s)
      refuse(fmt::format("{}: {} matches two config groups with different schemes", qc, linear_name));
    result = s;
  }
  const int b = result->num_bits;
  if (b != 2 && b != 4 && b != 8) {
    const json& version = at_or_null(q, "version");
    const auto [major, minor] = version.is_string() ? major_minor(version.get<std::string>())
                                                    : std::pair<int, int>{-1, -1};
    const auto [min_major, min_minor] = major_minor(QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION);
    if (major < 0 || std::make_pair(major, minor) < std::make_pair(min_major, min_minor))
      refuse(fmt::format("{}.version: {}; {}-bit pack-quantized before compressed-tensors {} packs "
                         "floor(32/{}) codes per word, which qforge does not read",
                         qc, version.dump(), b, QFORGE_CT_PACK_QUANTIZED_V1_MIN_VERSION, b));
  }
  return result;
}

}  // namespace qforge::host::ct
