// Safetensors reader, model-directory store and writer
// (host/src/safetensors.cpp, host/src/safetensors_header.cpp).
#include <gtest/gtest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace fs = std::filesystem;
using qforge::host::ModelFileError;
using qforge::host::SafetensorsFile;
using qforge::host::StDtype;
using qforge::host::TensorStore;
using qforge::host::save_safetensors;

namespace {

std::string shared_dir() {
  const char* env = std::getenv("QFORGE_SHARED");
  return env && *env ? env : QFORGE_TEST_SHARED_DIR;
}

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
}

// A fresh directory, removed with everything in it.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string templ = (fs::temp_directory_path() / "qforge-st-XXXXXX").string();
    if (!::mkdtemp(templ.data())) throw std::runtime_error("mkdtemp failed");
    path = templ;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : fs::recursive_directory_iterator(path)) out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
  }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file with exactly this header text and data.
std::string st_file(const std::string& header, const std::string& data = "") {
  return u64le(header.size()) + header + data;
}

uint64_t header_length(const std::string& bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(bytes[i]);
  return v;
}

// Runs `f`, expecting an exception of type E (named `what` in messages) whose
// message contains every string in `parts`.
template <class E>
void expect_error(const char* what, const std::function<void()>& f,
                  std::initializer_list<std::string> parts) {
  try {
    f();
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected " << what << ", got another exception: " << e.what();
    return;
  }
  std::string all;
  for (const auto& p : parts) all += " '" + p + "'";
  ADD_FAILURE() << "expected " << what << " mentioning" << all << ", nothing thrown";
}

// A bad model file (exit 2).
void expect_model_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  expect_error<ModelFileError>("ModelFileError", f, parts);
}

// A failed write: not bad input (exit 1).
void expect_io_error(const std::function<void()>& f, std::initializer_list<std::string> parts) {
  expect_error<qforge::host::IoError>("IoError", f, parts);
}

// Writes `bytes` to <dir>/<name> and expects opening it to fail naming the
// file and the given parts.
void expect_bad_file(const TempDir& dir, const std::string& name, const std::string& bytes,
                     std::initializer_list<std::string> parts) {
  SCOPED_TRACE(name);
  const std::string path = dir / name;
  write_bytes(path, bytes);
  expect_model_error([&] { SafetensorsFile f(path); }, {path});
  expect_model_error([&] { SafetensorsFile f(path); }, parts);
}

std::vector<std::pair<std::string, at::Tensor>> every_dtype() {
  at::manual_seed(7);
  return {
      {"f64", at::randn({3, 5}, at::kDouble)},
      {"f32", at::randn({4, 6})},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"bf16", at::randn({2, 3, 4}).to(at::kBFloat16)},
      {"i64", at::tensor({int64_t{1} << 62, int64_t{-5}, int64_t{0}}, at::kLong)},
      {"i32", at::randint(-100000, 100000, {5, 2}, at::kInt)},
      {"i16", at::randint(-30000, 30000, {9}, at::kShort)},
      {"i8", at::randint(-128, 128, {3, 3}, at::kChar)},
      {"u8", at::arange(0, 256, at::kByte)},
      {"f8_e4m3", qforge::host::as_f8_e4m3(at::arange(0, 256, at::kByte).flip(0))},
      {"bool", at::randint(0, 2, {11}).to(at::kBool)},
      {"empty", at::empty({0, 3})},
      {"scalar", at::scalar_tensor(2.5)},
      {"transposed", at::randn({3, 4}).t()},  // not contiguous: written as a contiguous copy
  };
}

}  // namespace

TEST(Safetensors, ErrorIsUsageError) {
  ModelFileError e("x");
  const qforge::host::UsageError& u = e;
  EXPECT_STREQ(u.what(), "x");
}

TEST(Safetensors, RoundTripEveryDtype) {
  TempDir dir;
  const std::string path = dir / "all.safetensors";
  const auto tensors = every_dtype();
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "round trip \xc3\xa9"}};
  save_safetensors(path, tensors, meta);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"all.safetensors"});  // no .tmp left

  const std::string bytes = read_bytes(path);
  const uint64_t n = header_length(bytes);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');

  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.tensors().size(), tensors.size());
  uint64_t expected_begin = 0;
  for (const auto& [name, src] : tensors) {
    SCOPED_TRACE(name);
    const auto& info = f.info(name);
    EXPECT_EQ(info.name, name);
    EXPECT_EQ(info.file, path);
    EXPECT_EQ(info.shape, src.sizes().vec());
    EXPECT_EQ(qforge::host::to_scalar_type(info.dtype), src.scalar_type());
    EXPECT_EQ(info.begin, expected_begin);  // data in the order given, back to back
    expected_begin = info.end;
    const at::Tensor v = f.view(name);
    EXPECT_EQ(v.scalar_type(), src.scalar_type());
    EXPECT_EQ(v.sizes(), src.sizes());
    EXPECT_TRUE(v.is_contiguous());
    EXPECT_TRUE(at::equal(v, src));
    const at::Tensor l = f.load(name, src.scalar_type());
    EXPECT_TRUE(at::equal(l, src));
    if (src.numel() > 0) {
      EXPECT_NE(l.data_ptr(), v.data_ptr());  // load copies even with the stored dtype
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data_ptr()) % v.element_size(), 0u);
    }
    if (src.is_floating_point()) {
      EXPECT_TRUE(at::equal(f.load(name, at::kFloat), src.to(at::kFloat)));
    }
  }
  EXPECT_EQ(bytes.size(), 8 + n + expected_begin);

  // The header lists tensors in the order given.
  const std::string header = bytes.substr(8, n);
  EXPECT_LT(header.find("\"f64\""), header.find("\"f32\""));
  EXPECT_LT(header.find("\"bool\""), header.find("\"empty\""));
}

// F8_E4M3 (no ATen dtype here) is uint8 bytes marked as such: read marked,
// stored as F8_E4M3, re-stored as F8_E4M3 from a view (as a checkpoint's
// untouched tensors are when tuned layers are written back).
TEST(Safetensors, F8E4M3IsMarkedBytes) {
  using qforge::host::as_f8_e4m3;
  using qforge::host::is_f8_e4m3;
  TempDir dir;
  // Bytes written by hand: 1.0, -448, the smallest subnormal, NaN, 0.
  const std::string path = dir / "f8.safetensors";
  std::string header = R"({"e":{"dtype":"F8_E4M3","shape":[5],"data_offsets":[0,5]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  write_bytes(path, st_file(header, std::string("\x38\xfe\x01\x7f\x00", 5)));
  const SafetensorsFile f(path);
  EXPECT_EQ(f.info("e").dtype, StDtype::F8_E4M3);
  EXPECT_STREQ(qforge::host::st_dtype_name(StDtype::F8_E4M3), "F8_E4M3");
  EXPECT_EQ(qforge::host::st_dtype_size(StDtype::F8_E4M3), 1u);
  const at::Tensor v = f.view("e");
  EXPECT_EQ(v.scalar_type(), at::kByte);
  EXPECT_TRUE(is_f8_e4m3(v));
  EXPECT_TRUE(at::equal(v, at::tensor({0x38, 0xfe, 0x01, 0x7f, 0x00}, at::kByte)));
  const at::Tensor bytes = f.load("e", at::kByte);  // a copy: plain bytes
  EXPECT_TRUE(at::equal(bytes, v));
  EXPECT_FALSE(is_f8_e4m3(bytes));
  expect_model_error([&] { f.load("e", at::kFloat); }, {path, "'e'", "F8_E4M3"});

  // Written back from the view (and from a slice of it, the mark's memory):
  // F8_E4M3 again, the same bytes; plain uint8 stays U8.
  const std::string out = dir / "out.safetensors";
  save_safetensors(out, {{"e", v}, {"tail", v.narrow(0, 3, 2)}, {"u", bytes}});
  const SafetensorsFile g(out);
  EXPECT_EQ(g.info("e").dtype, StDtype::F8_E4M3);
  EXPECT_EQ(g.info("tail").dtype, StDtype::F8_E4M3);
  EXPECT_EQ(g.info("u").dtype, StDtype::U8);
  EXPECT_TRUE(at::equal(g.view("e"), v));
  EXPECT_TRUE(at::equal(g.view("tail"), v.narrow(0, 3, 2)));
  EXPECT_NE(read_bytes(out).find(R"("e":{"dtype":"F8_E4M3","shape":[5],"data_offsets":[0,5]})"),
            std::string::npos);
  EXPECT_EQ(qforge::host::st_dtype_of(v), StDtype::F8_E4M3);
  EXPECT_EQ(qforge::host::st_dtype_of(bytes), StDtype::U8);

  // The mark shares memory and keeps it alive; views keep it, copies drop it.
  at::Tensor marked;
  {
    const at::Tensor src = at::arange(0, 12, at::kByte).reshape({3, 4});
    marked = as_f8_e4m3(src);
    EXPECT_EQ(marked.data_ptr(), src.data_ptr());
    EXPECT_EQ(marked.sizes(), src.sizes());
    EXPECT_FALSE(is_f8_e4m3(src));
  }
  EXPECT_TRUE(at::equal(marked, at::arange(0, 12, at::kByte).reshape({3, 4})));
  EXPECT_TRUE(is_f8_e4m3(marked.contiguous()));
  EXPECT_TRUE(is_f8_e4m3(marked[1]));
  EXPECT_TRUE(is_f8_e4m3(as_f8_e4m3(marked)));
  EXPECT_FALSE(is_f8_e4m3(marked.clone()));
  EXPECT_FALSE(is_f8_e4m3(marked.to(at::kChar)));
  const at::Tensor t = as_f8_e4m3(marked.t());  // not contiguous: a marked contiguous copy
  EXPECT_TRUE(is_f8_e4m3(t));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_TRUE(at::equal(t, marked.t()));
  EXPECT_TRUE(is_f8_e4m3(as_f8_e4m3(at::empty({0, 4}, at::kByte))));
  EXPECT_THROW(as_f8_e4m3(at::zeros({2}, at::kChar)), std::invalid_argument);
  EXPECT_FALSE(is_f8_e4m3(at::Tensor()));
}

// The exact bytes of a small file: what any safetensors reader expects.
TEST(SafetensorsWriter, ExactBytes) {
  TempDir dir;
  const std::string path = dir / "exact.safetensors";
  save_safetensors(path, {{"b", at::tensor({1.0f, -2.0f})}, {"a", at::tensor({int8_t{-1}}, at::kChar)}},
                   {{"k", "v"}});
  const std::string header =
      R"({"__metadata__":{"k":"v"},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("a":{"dtype":"I8","shape":[1],"data_offsets":[8,9]}})";
  std::string padded = header + std::string((8 - header.size() % 8) % 8, ' ');
  const float f[2] = {1.0f, -2.0f};
  const std::string expected =
      u64le(padded.size()) + padded + std::string(reinterpret_cast<const char*>(f), 8) + "\xff";
  EXPECT_EQ(read_bytes(path), expected);
}

TEST(Safetensors, ViewIsZeroCopyAndOutlivesTheFile) {
  TempDir dir;
  const std::string path = dir / "v.safetensors";
  const at::Tensor w = at::arange(0, 64, at::kFloat).reshape({8, 8});
  save_safetensors(path, {{"w", w}, {"b", at::ones({3}, at::kHalf)}});
  at::Tensor v;
  {
    SafetensorsFile f(path);
    v = f.view("w");
    EXPECT_EQ(f.view("w").data_ptr(), v.data_ptr());  // the same mapped bytes
    expect_model_error([&] { f.view("nope"); }, {path, "'nope'"});
    expect_model_error([&] { f.load("nope", at::kFloat); }, {path, "'nope'"});
  }
  EXPECT_TRUE(at::equal(v, w));  // the view holds the mapping
}

// Values decoded from bytes written by hand (not by our writer): F16 and
// BF16 special values, subnormals and extremes convert exactly to float32.
TEST(Safetensors, HalfAndBfloat16ConvertToFloat) {
  TempDir dir;
  const std::vector<uint16_t> f16 = {0x3C00, 0xC100, 0x7BFF, 0x0001, 0x0400, 0xFC00, 0x8000, 0x3555};
  const std::vector<float> f16_expect = {1.0f, -2.5f, 65504.0f, 5.9604644775390625e-08f,
                                         6.103515625e-05f, -INFINITY, -0.0f, 0.333251953125f};
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC040, 0x7F7F, 0x0001, 0x7F80, 0x3EAB};
  const std::vector<float> bf16_expect = {1.0f, -3.0f, 3.3895313892515355e38f, 9.183549615799121e-41f,
                                          INFINITY, 0.333984375f};
  std::string data;
  for (uint16_t v : f16) data += std::string{static_cast<char>(v & 0xff), static_cast<char>(v >> 8)};
  for (uint16_t v : bf16) data += std::string{static_cast<char>(v & 0xff), static_cast<char>(v >> 8)};
  std::string header = R"({"h":{"dtype":"F16","shape":[8],"data_offsets":[0,16]},)"
                       R"("b":{"dtype":"BF16","shape":[2,3],"data_offsets":[16,28]}})";
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string path = dir / "half.safetensors";
  write_bytes(path, st_file(header, data));

  SafetensorsFile f(path);
  const at::Tensor h = f.load("h", at::kFloat);
  ASSERT_EQ(h.scalar_type(), at::kFloat);
  for (size_t i = 0; i < f16_expect.size(); ++i) {
    const float got = h[i].item<float>();
    EXPECT_EQ(std::memcmp(&got, &f16_expect[i], 4), 0) << i << ": " << got << " vs " << f16_expect[i];
  }
  const at::Tensor b = f.load("b", at::kFloat).reshape({-1});
  for (size_t i = 0; i < bf16_expect.size(); ++i) EXPECT_EQ(b[i].item<float>(), bf16_expect[i]) << i;
  EXPECT_EQ(f.view("b").scalar_type(), at::kBFloat16);
  EXPECT_EQ(f.load("h", at::kDouble).scalar_type(), at::kDouble);
}

TEST(Safetensors, UnalignedTensorIsCopiedCorrectly) {
  TempDir dir;
  // Header of odd length, no padding: the F32 data is misaligned in memory.
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  ASSERT_NE((8 + header.size()) % 4, 0u);
  const float vals[2] = {1.5f, -7.25f};
  const std::string path = dir / "odd.safetensors";
  write_bytes(path, st_file(header, std::string(reinterpret_cast<const char*>(vals), 8)));
  SafetensorsFile f(path);
  const at::Tensor v = f.view("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data_ptr()) % 4, 0u);
  EXPECT_EQ(v[0].item<float>(), 1.5f);
  EXPECT_EQ(v[1].item<float>(), -7.25f);
}

TEST(Safetensors, ExtrasAcceptedZeroSizeGapsAndUnknownFields) {
  TempDir dir;
  // Zero-size tensors (also at an offset inside another span), a gap, an
  // unknown field with nested content, trailing padding and trailing bytes.
  const std::string header =
      R"({"z":{"dtype":"F32","shape":[0,4],"data_offsets":[2,2]},)"
      R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4],"extra":{"x":[1,[2]]}},)"
      R"("b":{"shape":[2],"dtype":"I16","data_offsets":[6,10]},"__metadata__":{}}   )";
  const std::string path = dir / "extras.safetensors";
  write_bytes(path, st_file(header, std::string("\x01\x02\x03\x04..\x05\x00\x06\x00tail", 14)));
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.view("z").sizes(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.load("b", at::kInt)[1].item<int>(), 6);
  EXPECT_TRUE(f.metadata().empty());
}

TEST(Safetensors, Stories260K) {
  const std::string dir = shared_dir() + "/models/stories260K";
  const std::string path = dir + "/model.safetensors";
  if (!fs::exists(path)) {
    if (in_ci()) FAIL() << "shared test data missing (CI=true): " << path;
    GTEST_SKIP() << "shared test data missing: " << path;
  }
  SafetensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 47u);  // embeddings + 5 layers x 9 + final norm (lm_head tied)
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {512, 64}},
      {"model.norm.weight", {64}},
      {"model.layers.0.input_layernorm.weight", {64}},
      {"model.layers.0.self_attn.q_proj.weight", {64, 64}},
      {"model.layers.0.self_attn.k_proj.weight", {32, 64}},
      {"model.layers.0.self_attn.v_proj.weight", {32, 64}},
      {"model.layers.0.self_attn.o_proj.weight", {64, 64}},
      {"model.layers.4.mlp.gate_proj.weight", {172, 64}},
      {"model.layers.4.mlp.up_proj.weight", {172, 64}},
      {"model.layers.4.mlp.down_proj.weight", {64, 172}},
  };
  for (const auto& [name, shape] : shapes) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(f.contains(name));
    EXPECT_EQ(f.info(name).shape, shape);
    EXPECT_EQ(f.info(name).dtype, StDtype::F32);
  }
  EXPECT_FALSE(f.contains("lm_head.weight"));

  TensorStore store(dir);
  const std::vector<std::string> names = store.names();
  EXPECT_EQ(names.size(), 47u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_EQ(store.total_bytes(), fs::file_size(path) - 8 - header_length(read_bytes(path)));
  expect_model_error([&] { store.info("lm_head.weight"); }, {"'lm_head.weight'", dir});

  // The embedding and the first RMSNorm weight equal the llama2.c
  // checkpoint the file was converted from (7 int32 config, then the
  // token embedding table, then the attention norms).
  const std::string orig = dir + "/llama2c/stories260K.bin";
  if (fs::exists(orig)) {
    const std::string raw = read_bytes(orig);
    const at::Tensor emb = store.load("model.embed_tokens.weight", at::kFloat);
    ASSERT_EQ(std::memcmp(emb.data_ptr(), raw.data() + 28, 512 * 64 * 4), 0);
    const at::Tensor norm = store.load("model.layers.0.input_layernorm.weight", at::kFloat);
    ASSERT_EQ(std::memcmp(norm.data_ptr(), raw.data() + 28 + 512 * 64 * 4, 64 * 4), 0);
    EXPECT_TRUE(at::equal(store.load("model.embed_tokens.weight", at::kHalf).to(at::kFloat),
                          emb.to(at::kHalf).to(at::kFloat)));
  }
}

TEST(Safetensors, ShardedDirectory) {
  TempDir dir;
  fs::create_directory(dir.path / "sub");
  const at::Tensor a = at::randn({4, 4}), b = at::randn({3}).to(at::kBFloat16), c = at::arange(5, at::kLong);
  save_safetensors(dir / "model-00001-of-00002.safetensors", {{"a", a}, {"b", b}});
  save_safetensors(dir / "sub/model-00002-of-00002.safetensors", {{"c", c}, {"unlisted", at::ones({2})}});
  write_bytes(dir / "model.safetensors.index.json",
              R"({"metadata":{"total_size":112},"weight_map":{)"
              R"("a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",)"
              R"("c":"sub/model-00002-of-00002.safetensors"}})");
  TensorStore store(dir.path.string());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_TRUE(store.contains("c"));
  EXPECT_FALSE(store.contains("unlisted"));  // in a shard, not in the index
  EXPECT_EQ(store.info("c").file, dir / "sub/model-00002-of-00002.safetensors");
  EXPECT_EQ(store.info("a").file, dir / "model-00001-of-00002.safetensors");
  EXPECT_TRUE(at::equal(store.load("a", at::kFloat), a));
  EXPECT_TRUE(at::equal(store.load("b", at::kFloat), b.to(at::kFloat)));
  EXPECT_TRUE(at::equal(store.load("c", at::kLong), c));
  EXPECT_EQ(store.total_bytes(), 4u * 4 * 4 + 3 * 2 + 5 * 8);
  EXPECT_EQ(store.files().size(), 2u);
  expect_model_error([&] { store.load("d", at::kFloat); }, {"'d'"});

  // A single file named directly, and a directory holding model.safetensors.
  TensorStore one(dir / "model-00001-of-00002.safetensors");
  EXPECT_EQ(one.names(), (std::vector<std::string>{"a", "b"}));
  fs::copy_file(dir / "sub/model-00002-of-00002.safetensors", dir / "model.safetensors");
  TensorStore single(dir.path.string());  // the single file wins over the index
  EXPECT_EQ(single.names(), (std::vector<std::string>{"c", "unlisted"}));

  // Moving keeps the tensors reachable.
  TensorStore moved(std::move(store));
  EXPECT_TRUE(at::equal(moved.load("c", at::kLong), c));
}

TEST(Safetensors, BadIndex) {
  TempDir dir;
  save_safetensors(dir / "s1.safetensors", {{"a", at::ones({2})}});
  const std::string index = dir / "model.safetensors.index.json";
  auto expect_bad_index = [&](const std::string& text, std::initializer_list<std::string> parts) {
    SCOPED_TRACE(text);
    write_bytes(index, text);
    expect_model_error([&] { TensorStore s(dir.path.string()); }, {index});
    expect_model_error([&] { TensorStore s(dir.path.string()); }, parts);
  };
  expect_bad_index(R"({"weight_map":{"a":"s1.safetensors","w":"missing.safetensors"}})",
                   {"'w'", "missing.safetensors", "does not exist"});
  expect_bad_index(R"({"weight_map":{"w":"../x"}})", {"'w'", "../x", "escapes"});
  expect_bad_index(R"({"weight_map":{"w":"sub/../../x.safetensors"}})", {"'w'", "escapes"});
  expect_bad_index(R"({"weight_map":{"w":"/etc/passwd"}})", {"'w'", "absolute"});
  expect_bad_index(R"({"weight_map":{"w":""}})", {"'w'", "empty"});
  expect_bad_index(R"({"weight_map":{"w":3}})", {"'w'", "not a string"});
  expect_bad_index(R"({"weight_map":{"zz":"s1.safetensors"}})", {"'zz'", "s1.safetensors", "does not contain"});
  expect_bad_index(R"({"weight_map":{}})", {"empty"});
  expect_bad_index(R"({"weight_map":[]})", {"weight_map", "not a JSON object"});
  expect_bad_index(R"({"metadata":{}})", {"no \"weight_map\""});
  expect_bad_index(R"([1, 2])", {"not a JSON object"});
  expect_bad_index(R"({"weight_map": {"a": "s1.safetensors")", {"not valid JSON"});
  expect_bad_index(std::string(100000, '[') + std::string(100000, ']'), {"nests deeper"});
  expect_bad_index("", {"not valid JSON"});
  fs::create_directory(dir.path / "d.safetensors");
  expect_bad_index(R"({"weight_map":{"w":"d.safetensors"}})", {"'w'", "not a regular file"});
  // A shard that is itself corrupt is named.
  write_bytes(dir / "bad.safetensors", "garbage!garbage");
  write_bytes(index, R"({"weight_map":{"w":"bad.safetensors"}})");
  expect_model_error([&] { TensorStore s(dir.path.string()); }, {dir / "bad.safetensors", "header length"});

  fs::remove(index);
  expect_model_error([&] { TensorStore s(dir.path.string()); }, {dir.path.string(), "no model.safetensors"});
  expect_model_error([&] { TensorStore s(dir / "nowhere"); }, {"nowhere", "no such"});
}

TEST(Safetensors, TruncatedFiles) {
  TempDir dir;
  const std::string good = dir / "good.safetensors";
  save_safetensors(good, {{"first", at::randn({16})}, {"last", at::randn({4, 4})}});
  const std::string bytes = read_bytes(good);
  const uint64_t n = header_length(bytes);
  ASSERT_NO_THROW(SafetensorsFile f(good));

  for (size_t cut : {size_t{0}, size_t{1}, size_t{7}}) {
    expect_bad_file(dir, "short" + std::to_string(cut), bytes.substr(0, cut), {"shorter than"});
  }
  for (size_t cut : {size_t{8}, size_t{9}, size_t{8 + n / 2}, size_t{8 + n - 1}}) {
    expect_bad_file(dir, "header" + std::to_string(cut), bytes.substr(0, cut), {"header length", "truncated"});
  }
  // Cut inside the data: the first tensor that no longer fits is named.
  for (size_t cut : {size_t{8 + n}, size_t{8 + n + 10}, size_t{8 + n + 63}}) {
    expect_bad_file(dir, "data" + std::to_string(cut), bytes.substr(0, cut), {"'first'", "beyond the data area"});
  }
  for (size_t cut : {size_t{8 + n + 64}, size_t{8 + n + 100}, bytes.size() - 1}) {
    expect_bad_file(dir, "data" + std::to_string(cut), bytes.substr(0, cut), {"'last'", "beyond the data area"});
  }
}

TEST(Safetensors, BadHeaderLength) {
  TempDir dir;
  const std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  expect_bad_file(dir, "zero", u64le(0) + header + "x", {"header length is 0"});
  expect_bad_file(dir, "huge", u64le(~uint64_t{0}) + header + "x", {"exceeds the limit"});
  expect_bad_file(dir, "2^40", u64le(uint64_t{1} << 40) + header + "x", {"exceeds the limit"});
  expect_bad_file(dir, "100MB+1", u64le(100'000'001) + header + "x", {"exceeds the limit"});
  expect_bad_file(dir, "past", u64le(header.size() + 2) + header + "x", {"exceeds the", "truncated"});
}

TEST(Safetensors, BadHeaderJson) {
  TempDir dir;
  const std::string ok = R"("a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]})";
  auto bad = [&](const std::string& label, const std::string& header, std::initializer_list<std::string> parts,
                 const std::string& data = "x") { expect_bad_file(dir, label, st_file(header, data), parts); };

  bad("garbage", "garbage!", {"not a safetensors file"});
  bad("array", "[1,2,3]", {"does not start with '{'"});
  bad("unterminated", "{" + ok, {"not valid JSON"});
  bad("trailing", "{" + ok + "} x", {"not valid JSON"});
  bad("two objects", "{" + ok + "}{}", {"not valid JSON"});
  bad("nul", std::string("{\"a\0\":1}", 9), {"not valid JSON"});
  bad("bad utf8", "{\"\xff\xfe\":{}}", {"not valid JSON"});
  bad("comment", "{/*c*/" + ok + "}", {"not valid JSON"});
  bad("empty name", R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", {"empty name"});
  bad("duplicate", "{" + ok + "," + ok + "}", {"duplicate", "'a'"});
  bad("meta not object", R"({"__metadata__":[],)" + ok + "}", {"__metadata__", "not an object"});
  bad("meta not string", R"({"__metadata__":{"k":1},)" + ok + "}", {"__metadata__", "'k'", "not a string"});
  bad("meta nested", R"({"__metadata__":{"k":{"x":"y"}},)" + ok + "}", {"'k'", "not a string"});
  bad("meta duplicate", R"({"__metadata__":{"k":"1","k":"2"},)" + ok + "}", {"duplicate", "'k'"});
  bad("meta twice", R"({"__metadata__":{},"__metadata__":{}})", {"duplicate", "__metadata__"});
  bad("entry not object", R"({"w":[1]})", {"'w'", "not a JSON object"});
  bad("entry string", R"({"w":"F32"})", {"'w'", "not a JSON object"});
  bad("deep nesting", R"({"w":{"x":)" + std::string(200000, '[') + std::string(200000, ']') + "}}",
      {"'w'", "deeper"});
  bad("deep root", R"({"w":)" + std::string(200000, '{'), {"not valid JSON"});
}

TEST(Safetensors, BadEntries) {
  TempDir dir;
  auto bad = [&](const std::string& label, const std::string& entry, std::initializer_list<std::string> parts,
                 const std::string& data = std::string(16, 'x')) {
    expect_bad_file(dir, label, st_file(R"({"__metadata__":{"a":"b"},"w":)" + entry + "}", data), parts);
  };
  bad("no dtype", R"({"shape":[1],"data_offsets":[0,1]})", {"'w'", "missing dtype"});
  bad("no shape", R"({"dtype":"U8","data_offsets":[0,1]})", {"'w'", "missing shape"});
  bad("no offsets", R"({"dtype":"U8","shape":[1]})", {"'w'", "missing data_offsets"});
  bad("unknown dtype", R"({"dtype":"F8_E5M2","shape":[1],"data_offsets":[0,1]})",
      {"'w'", "unknown dtype", "'F8_E5M2'", "F8_E4M3"});
  bad("lower dtype", R"({"dtype":"f32","shape":[1],"data_offsets":[0,4]})", {"'w'", "unknown dtype"});
  bad("dtype number", R"({"dtype":4,"shape":[1],"data_offsets":[0,1]})", {"'w'", "dtype is not a string"});
  bad("dup field", R"({"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]})", {"'w'", "duplicate field"});
  bad("shape string", R"({"dtype":"U8","shape":"1","data_offsets":[0,1]})", {"'w'", "shape is not an array"});
  bad("shape negative", R"({"dtype":"U8","shape":[-1],"data_offsets":[0,1]})", {"'w'", "shape", "negative"});
  bad("shape float", R"({"dtype":"U8","shape":[1.0],"data_offsets":[0,1]})", {"'w'", "shape", "non-integer"});
  bad("shape nested", R"({"dtype":"U8","shape":[[1]],"data_offsets":[0,1]})", {"'w'", "shape"});
  bad("shape null", R"({"dtype":"U8","shape":[null],"data_offsets":[0,1]})", {"'w'", "shape"});
  bad("shape huge", R"({"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]})",
      {"'w'", "too large"});
  bad("shape beyond u64", R"({"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]})",
      {"'w'", "shape"});
  bad("rank 65", R"({"dtype":"U8","shape":[)" + [] {
        std::string s = "1";
        for (int i = 0; i < 64; ++i) s += ",1";
        return s;
      }() + R"(],"data_offsets":[0,1]})",
      {"'w'", "more than 64 dimensions"});
  bad("overflow", R"({"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]})",
      {"'w'", "overflows"});
  bad("overflow with zero", R"({"dtype":"F32","shape":[0,4611686018427387904,8],"data_offsets":[0,0]})",
      {"'w'", "overflows"});
  bad("offsets one", R"({"dtype":"U8","shape":[1],"data_offsets":[1]})", {"'w'", "data_offsets", "two"});
  bad("offsets three", R"({"dtype":"U8","shape":[1],"data_offsets":[0,1,2]})", {"'w'", "data_offsets"});
  bad("offsets negative", R"({"dtype":"U8","shape":[1],"data_offsets":[-1,0]})", {"'w'", "data_offsets"});
  bad("offsets object", R"({"dtype":"U8","shape":[1],"data_offsets":{"0":1}})", {"'w'", "data_offsets"});
  bad("begin > end", R"({"dtype":"U8","shape":[0],"data_offsets":[4,2]})", {"'w'", "begin > end"});
  bad("mismatch", R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,12]})", {"'w'", "needs 16 bytes", "span 12"});
  bad("mismatch dtype", R"({"dtype":"F16","shape":[4],"data_offsets":[0,16]})", {"'w'", "needs 8 bytes"});
  bad("past end", R"({"dtype":"U8","shape":[4],"data_offsets":[14,18]})", {"'w'", "beyond the data area"});
  bad("huge offsets", R"({"dtype":"U8","shape":[2],"data_offsets":[18446744073709551613,18446744073709551615]})",
      {"'w'", "beyond the data area"});

  // Overlaps, named both ways round.
  const std::string a = R"("a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]})";
  expect_bad_file(dir, "overlap",
                  st_file("{" + a + R"(,"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})", std::string(16, 'x')),
                  {"'b'", "overlap", "'a'"});
  expect_bad_file(dir, "inside",
                  st_file("{" + a + R"(,"b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}})", std::string(16, 'x')),
                  {"'b'", "overlap", "'a'"});
  expect_bad_file(dir, "same",
                  st_file("{" + a + R"(,"b":{"dtype":"I8","shape":[8],"data_offsets":[0,8]}})", std::string(16, 'x')),
                  {"overlap", "'a'", "'b'"});
  expect_bad_file(dir, "after other",
                  st_file(R"({"a":{"dtype":"U8","shape":[16],"data_offsets":[0,16]},)"
                          R"("b":{"dtype":"U8","shape":[2],"data_offsets":[2,4]},)"
                          R"("c":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                          std::string(16, 'x')),
                  {"overlap", "'a'"});

  // Names with control bytes are escaped in messages.
  expect_bad_file(dir, "escaped", st_file(R"({"a\nb":{"dtype":"X"}})"), {"'a\\x0ab'"});
}

TEST(Safetensors, BoolBytesAreChecked) {
  TempDir dir;
  const std::string path = dir / "bool.safetensors";
  write_bytes(path, st_file(R"({"m":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}})", std::string("\x01\x00\x02", 3)));
  SafetensorsFile f(path);  // the header is fine
  expect_model_error([&] { f.view("m"); }, {path, "'m'", "BOOL"});
  expect_model_error([&] { f.load("m", at::kFloat); }, {path, "'m'"});
}

TEST(Safetensors, OpenErrors) {
  TempDir dir;
  expect_model_error([&] { SafetensorsFile f(dir / "missing.safetensors"); }, {"missing.safetensors", "cannot open"});
  expect_model_error([&] { SafetensorsFile f(dir.path.string()); }, {dir.path.string(), "not a regular file"});
}

TEST(SafetensorsWriter, RefusesBadInputWithoutWriting) {
  TempDir dir;
  const std::string path = dir / "out.safetensors";
  const at::Tensor t = at::ones({2});
  expect_model_error([&] { save_safetensors(path, {{"", t}}); }, {path, "empty name"});
  expect_model_error([&] { save_safetensors(path, {{"a", t}, {"a", t}}); }, {path, "'a'", "twice"});
  expect_model_error([&] { save_safetensors(path, {{"__metadata__", t}}); }, {path, "reserved"});
  expect_model_error([&] { save_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}}); },
                     {path, "'c'", "cannot be stored"});
  expect_model_error([&] { save_safetensors(path, {{"u", at::Tensor()}}); }, {path, "'u'", "undefined"});
  expect_model_error([&] { save_safetensors(path, {{"\xff", t}}); }, {path, "UTF-8"});
  EXPECT_TRUE(dir.entries().empty());
}

TEST(SafetensorsWriter, FailureLeavesNoFileAndNoTemporary) {
  TempDir dir;
  const at::Tensor t = at::randn({64, 64});

  // The directory does not exist.
  expect_io_error([&] { save_safetensors(dir / "no/such/dir/x.safetensors", {{"t", t}}); },
                     {"x.safetensors", "cannot create"});
  EXPECT_TRUE(dir.entries().empty());

  // The target is a directory: the rename fails, the temporary goes away.
  fs::create_directory(dir.path / "taken.safetensors");
  fs::create_directory(dir.path / "taken.safetensors" / "child");
  expect_io_error([&] { save_safetensors(dir / "taken.safetensors", {{"t", t}}); }, {"taken.safetensors", "rename"});
  EXPECT_EQ(dir.entries(), (std::vector<std::string>{"child", "taken.safetensors"}));
  fs::remove_all(dir.path / "taken.safetensors");

  // A write that fails half-way (file size limit): the old file stays as it was.
  const std::string path = dir / "model.safetensors";
  save_safetensors(path, {{"old", at::ones({4})}});
  const std::string before = read_bytes(path);
  {
    struct rlimit old_limit {};
    ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit small = old_limit;
    small.rlim_cur = 4096;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    expect_io_error([&] { save_safetensors(path, {{"t", t}}); }, {path, "cannot write"});
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    std::signal(SIGXFSZ, old_handler);
  }
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});

  // An unwritable directory (root ignores permissions: checked only as a user).
  if (::geteuid() != 0) {
    fs::create_directory(dir.path / "ro");
    fs::permissions(dir.path / "ro", fs::perms::owner_read | fs::perms::owner_exec);
    expect_io_error([&] { save_safetensors(dir / "ro/x.safetensors", {{"t", t}}); }, {"x.safetensors"});
    fs::permissions(dir.path / "ro", fs::perms::owner_all);
    EXPECT_TRUE(fs::is_empty(dir.path / "ro"));
  }

  // And a successful write replaces the file.
  save_safetensors(path, {{"new", t}});
  SafetensorsFile f(path);
  EXPECT_TRUE(f.contains("new"));
  EXPECT_FALSE(f.contains("old"));
  for (const auto& e : dir.entries()) EXPECT_EQ(e.find(".tmp-"), std::string::npos) << e;
}
