// compressed-tensors pack-quantized codec; see compressed_tensors_codec.hpp
// and <qforge/formats/ct_pack_quantized_v1.h> (the layout).
#include "compressed_tensors_codec.hpp"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <qforge/formats/ct_pack_quantized_v1.h>

#include <algorithm>
#include <limits>

#include "qforge_host/errors.hpp"

namespace qforge::host::ct {
namespace {

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

const char* actorder_name(ActOrder a) {
  return a == ActOrder::group ? "group" : a == ActOrder::weight ? "static" : nullptr;
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

}  // namespace qforge::host::ct
