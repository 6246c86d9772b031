// The registry against real plugin libraries: a good one written in plain C
// (c_plugin.c) and deliberately broken ones (broken/*.c), each broken case in
// its own directory. Every broken library must be refused with a one-line
// reason that says what is wrong, and must never stop the good plugin from
// loading (qforge_host/plugins/registry.hpp).
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/plugins/params.hpp"
#include "qforge_host/plugins/abi_bridge.hpp"
#include "qforge_host/plugins/registry.hpp"
#include "qforge_host/plugins/services.hpp"

namespace {

namespace fs = std::filesystem;
using qforge::host::Component;
using qforge::host::ParamValues;
using qforge::host::Refusal;
using qforge::host::Registry;

constexpr const char* kSignId = "org.qforge.test.sign";

std::string case_dir(const std::string& name) {
  return std::string(QFORGE_TEST_PLUGIN_DIR) + "/" + name;
}
std::string library_file(const std::string& dir_name, const std::string& stem) {
  return case_dir(dir_name) + "/" + stem + QFORGE_TEST_PLUGIN_SUFFIX;
}
std::string c_plugin_file() { return library_file("c_plugin", "qforge-test-c-plugin"); }

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return fs::equivalent(a, b, ec) && !ec;
}

// A registry restricted to the given directories (never the default ones).
void load_only(Registry& registry, const std::vector<std::string>& dirs) {
  registry.use_default_directories(false);
  for (const auto& d : dirs) registry.add_directory(d);
  registry.load();
}

std::string describe(const Registry& registry) {
  std::string s = "components:";
  for (const auto& c : registry.components()) s += " " + std::string(c.desc->id) + "@" + c.library;
  s += "\nrefusals:";
  for (const auto& r : registry.refusals()) s += "\n  " + r.library + ": " + r.reason;
  return s;
}

std::vector<Refusal> refusals_of(const Registry& registry, const std::string& file) {
  std::vector<Refusal> out;
  for (const auto& r : registry.refusals())
    if (same_file(r.library, file)) out.push_back(r);
  return out;
}

void expect_c_plugin_loaded(const Registry& registry) {
  const Component* sign = registry.find(kSignId);
  ASSERT_NE(sign, nullptr) << describe(registry);
  EXPECT_TRUE(same_file(sign->library, c_plugin_file())) << sign->library;
  EXPECT_EQ(sign->plugin_name, "qforge-test-c-plugin");
  EXPECT_EQ(sign->plugin_version, "1.0.0");
  EXPECT_NE(sign->quantizer(), nullptr);
  EXPECT_EQ(sign->inference_layer(), nullptr);
  EXPECT_EQ(sign->postprocess(), nullptr);
  EXPECT_TRUE(refusals_of(registry, c_plugin_file()).empty()) << describe(registry);
}

// ---- one broken library next to the good C plugin ---------------------------------

struct BrokenCase {
  const char* dir;                      // plugins/<dir>
  const char* file;                     // the refused library's stem
  std::vector<const char*> substrings;  // each must appear in the reason
  const char* refused_id;               // its component id (must not load), or NULL
};

std::ostream& operator<<(std::ostream& os, const BrokenCase& c) { return os << c.dir; }

class BrokenPlugin : public ::testing::TestWithParam<BrokenCase> {};

TEST_P(BrokenPlugin, RefusedWithOneLineReasonWhileTheGoodPluginLoads) {
  const BrokenCase& c = GetParam();
  const std::string broken = library_file(c.dir, c.file);
  ASSERT_TRUE(fs::exists(broken)) << broken << " was not built";

  Registry registry;
  load_only(registry, {case_dir(c.dir), case_dir("c_plugin")});

  // Exactly one refusal, for the broken library.
  ASSERT_EQ(registry.refusals().size(), 1u) << describe(registry);
  const Refusal& refusal = registry.refusals()[0];
  EXPECT_TRUE(same_file(refusal.library, broken)) << refusal.library;
  EXPECT_EQ(refusal.reason.find('\n'), std::string::npos) << refusal.reason;
  EXPECT_EQ(refusal.reason.find('\r'), std::string::npos) << refusal.reason;
  EXPECT_FALSE(refusal.reason.empty());
  for (const char* s : c.substrings)
    EXPECT_NE(refusal.reason.find(s), std::string::npos)
        << "reason '" << refusal.reason << "' does not mention '" << s << "'";
  if (c.refused_id != nullptr) {
    EXPECT_EQ(registry.find(c.refused_id), nullptr);
  }
  for (const auto& comp : registry.components())
    EXPECT_FALSE(same_file(comp.library, broken)) << comp.desc->id << " came from " << broken;

  expect_c_plugin_loaded(registry);
  EXPECT_EQ(registry.components().size(), 1u) << describe(registry);
}

INSTANTIATE_TEST_SUITE_P(
    Abi, BrokenPlugin,
    ::testing::Values(
        BrokenCase{"no_entry", "no_entry", {"qforge_plugin_entry_v1"}, nullptr},
        BrokenCase{"v2_only", "v2_only", {"qforge_plugin_entry_v2", "major"}, nullptr},
        BrokenCase{"wrong_major", "wrong_major", {"major", "2"}, "org.qforge.test.wrong-major"},
        BrokenCase{"newer_minor",
                   "newer_minor",
                   {"minor", "org.qforge.test.newer-minor"},
                   "org.qforge.test.newer-minor"},
        BrokenCase{"missing_id", "missing_id", {"id"}, nullptr},
        BrokenCase{"bad_schema",
                   "bad_schema",
                   {"choices", "mode", "org.qforge.test.bad-schema"},
                   "org.qforge.test.bad-schema"},
        BrokenCase{"bad_default",
                   "bad_default",
                   {"default", "bits", "99", "org.qforge.test.bad-default"},
                   "org.qforge.test.bad-default"},
        BrokenCase{"init_fails",
                   "init_fails",
                   {"license check failed"},
                   "org.qforge.test.init-fails"},
        BrokenCase{"null_entry", "null_entry", {"NULL"}, "org.qforge.test.null-entry"},
        BrokenCase{"small_struct",
                   "small_struct",
                   {"struct_size"},
                   "org.qforge.test.small-struct"},
        BrokenCase{"preprocess_minor",
                   "preprocess_minor",
                   {"pre-process", "min_host_minor"},
                   "org.qforge.test.preprocess-minor"}),
    [](const ::testing::TestParamInfo<BrokenCase>& info) { return std::string(info.param.dir); });

// Two libraries in one directory declare the same id: directories are scanned
// in sorted order, so dup_a wins and dup_b is refused, naming dup_a.
TEST(Registry, DuplicateIdRefusesTheSecondLibraryNamingTheFirst) {
  const std::string first = library_file("duplicate_id", "dup_a");
  const std::string second = library_file("duplicate_id", "dup_b");
  ASSERT_TRUE(fs::exists(first) && fs::exists(second));

  Registry registry;
  load_only(registry, {case_dir("duplicate_id"), case_dir("c_plugin")});

  ASSERT_EQ(registry.refusals().size(), 1u) << describe(registry);
  const Refusal& refusal = registry.refusals()[0];
  EXPECT_TRUE(same_file(refusal.library, second)) << refusal.library;
  EXPECT_EQ(refusal.reason.find('\n'), std::string::npos) << refusal.reason;
  EXPECT_NE(refusal.reason.find("duplicate"), std::string::npos) << refusal.reason;
  EXPECT_NE(refusal.reason.find("org.qforge.test.dup"), std::string::npos) << refusal.reason;

  const Component* dup = registry.find("org.qforge.test.dup");
  ASSERT_NE(dup, nullptr);
  EXPECT_TRUE(same_file(dup->library, first)) << dup->library;
  EXPECT_EQ(dup->plugin_name, "qforge-test-dup-a");
  // The reason names the first library by the path the registry knows it by.
  EXPECT_NE(refusal.reason.find(dup->library), std::string::npos) << refusal.reason;

  expect_c_plugin_loaded(registry);
  EXPECT_EQ(registry.components().size(), 2u) << describe(registry);
}

// Every broken library at once: each is refused on its own, nothing else is.
TEST(Registry, AllBrokenPluginsTogetherLeaveTheGoodOnesAlone) {
  const std::vector<std::string> cases = {
      "no_entry",   "v2_only",    "wrong_major", "newer_minor",  "missing_id",  "bad_schema",
      "bad_default", "init_fails", "null_entry",  "small_struct", "duplicate_id",
      "preprocess_minor"};
  std::vector<std::string> dirs;
  for (const auto& c : cases) dirs.push_back(case_dir(c));
  dirs.push_back(case_dir("c_plugin"));

  Registry registry;
  load_only(registry, dirs);

  EXPECT_EQ(registry.refusals().size(), cases.size()) << describe(registry);
  for (const auto& r : registry.refusals())
    EXPECT_EQ(r.reason.find('\n'), std::string::npos) << r.reason;
  ASSERT_EQ(registry.components().size(), 2u) << describe(registry);
  EXPECT_NE(registry.find("org.qforge.test.dup"), nullptr);
  expect_c_plugin_loaded(registry);
}

// Loading is idempotent, and a directory given twice (even spelt differently)
// is scanned once: no component appears twice and nothing is refused.
TEST(Registry, SameDirectoryTwiceDoesNotDuplicateComponents) {
  Registry registry;
  registry.use_default_directories(false);
  registry.add_directory(case_dir("c_plugin"));
  registry.add_directory(case_dir("c_plugin"));
  registry.add_directory(case_dir("c_plugin") + "/../c_plugin/");
  registry.load();
  registry.load();
  EXPECT_TRUE(registry.refusals().empty()) << describe(registry);
  ASSERT_EQ(registry.components().size(), 1u) << describe(registry);
  expect_c_plugin_loaded(registry);
}

// A missing or empty directory is not an error.
TEST(Registry, MissingDirectoryIsIgnored) {
  Registry registry;
  load_only(registry, {case_dir("does_not_exist"), case_dir("c_plugin")});
  EXPECT_TRUE(registry.refusals().empty()) << describe(registry);
  expect_c_plugin_loaded(registry);
}

// init is called once per registry and deinit once when it goes away; a plugin
// whose init failed never sees deinit. Read through test-only symbols of the
// already-loaded libraries (RTLD_NOLOAD: never loads a second copy).
template <class Fn>
Fn loaded_symbol(const std::string& file, const char* name) {
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
  if (handle == nullptr) return nullptr;
  Fn fn = reinterpret_cast<Fn>(dlsym(handle, name));
  dlclose(handle);  // drops only the reference taken above
  return fn;
}
using CallCounts = void (*)(int*, int*);

TEST(Registry, InitOnceAndDeinitOnceForTheGoodPluginNeverAfterAFailedInit) {
  const std::string failing = library_file("init_fails", "init_fails");
  CallCounts good = nullptr;
  CallCounts bad = nullptr;
  int good_init = 0, good_deinit = 0, bad_init = 0, bad_deinit = 0;
  {
    Registry registry;
    load_only(registry, {case_dir("init_fails"), case_dir("c_plugin")});
    registry.load();  // idempotent: no second init
    good = loaded_symbol<CallCounts>(c_plugin_file(), "qforge_test_c_plugin_calls");
    bad = loaded_symbol<CallCounts>(failing, "qforge_test_init_fails_calls");
    ASSERT_NE(good, nullptr) << "the C plugin is not loaded";
    ASSERT_NE(bad, nullptr) << "the failing plugin is not loaded";
    good(&good_init, &good_deinit);
    bad(&bad_init, &bad_deinit);
    EXPECT_EQ(good_init - good_deinit, 1) << "init must run once per registry";
    EXPECT_GE(bad_init, 1);
  }
  // The registry is gone; libraries stay mapped (never unloaded).
  int gi = 0, gd = 0, bi = 0, bd = 0;
  good(&gi, &gd);
  bad(&bi, &bd);
  EXPECT_EQ(gi, good_init);
  EXPECT_EQ(gd, good_deinit + 1) << "deinit must run once when the registry goes away";
  EXPECT_EQ(bi, bad_init);
  EXPECT_EQ(bd, 0) << "deinit must not run after a failed init";
}

// QFORGE_PLUGIN_PATH is searched when default directories are on, and only then.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* old = std::getenv(name)) {
      old_ = old;
      had_ = true;
    }
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }

 private:
  const char* name_;
  std::string old_;
  bool had_ = false;
};

TEST(Registry, PluginPathEnvironmentVariableIsHonoured) {
  ScopedEnv env("QFORGE_PLUGIN_PATH", case_dir("does_not_exist") + "::" + case_dir("c_plugin"));
  {
    Registry registry;  // default directories on
    const auto dirs = registry.directories();
    bool listed = false;
    for (const auto& d : dirs) listed = listed || same_file(d, case_dir("c_plugin"));
    EXPECT_TRUE(listed) << "QFORGE_PLUGIN_PATH entry missing from directories()";
    registry.load();
    const Component* sign = registry.find(kSignId);
    ASSERT_NE(sign, nullptr) << describe(registry);
    EXPECT_TRUE(same_file(sign->library, c_plugin_file()));
    EXPECT_TRUE(refusals_of(registry, c_plugin_file()).empty());

    // The default directory <exe>/../lib/qforge/plugins is searched too, after
    // the variable's entries; in the build tree it is QFORGE_PLUGIN_OUTPUT_DIR.
    const std::string default_dir = QFORGE_TEST_DEFAULT_PLUGIN_DIR;
    ASSERT_FALSE(dirs.empty());
    if (fs::is_directory(default_dir)) {
      EXPECT_TRUE(same_file(dirs.back(), default_dir)) << dirs.back();
      bool any_plugin = false;
      for (const auto& e : fs::directory_iterator(default_dir))
        any_plugin = any_plugin || e.path().extension() == QFORGE_TEST_PLUGIN_SUFFIX;
      if (any_plugin) {  // e.g. qforge-rtn: loaded or refused, but looked at
        auto in_default = [&](const std::string& library) {
          return same_file(fs::path(library).parent_path().string(), default_dir);
        };
        bool seen = false;
        for (const auto& c : registry.components()) seen = seen || in_default(c.library);
        for (const auto& r : registry.refusals()) seen = seen || in_default(r.library);
        EXPECT_TRUE(seen) << describe(registry);
      }
    }
  }
  {
    Registry registry;
    registry.use_default_directories(false);
    registry.load();
    EXPECT_EQ(registry.find(kSignId), nullptr) << "QFORGE_PLUGIN_PATH used with defaults off";
    EXPECT_TRUE(registry.components().empty()) << describe(registry);
  }
}

// ---- the C plugin's quantizer ------------------------------------------------------

// The same C source built against today's headers (c_plugin) and against
// the frozen v1.0 headers (c_plugin_v1_0): a v1.0 plugin keeps working.
class SignQuantizer : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    load_only(registry_, {case_dir(GetParam())});
    sign_ = registry_.find(kSignId);
    ASSERT_NE(sign_, nullptr) << describe(registry_);
  }

  // W ≈ α_r·sign(W), α_r = scale·mean|W_r| (XNOR-Net Eq. 4), sign(0) = +1.
  static at::Tensor expected_alpha(const at::Tensor& w, double scale) {
    return (w.to(at::kDouble).abs().mean({1}) * scale).to(at::kFloat);
  }
  static at::Tensor expected_signs(const at::Tensor& w) { return w.ge(0).to(at::kByte); }
  static at::Tensor expected_dequantized(const at::Tensor& w, double scale) {
    at::Tensor pm = expected_signs(w).to(at::kFloat) * 2 - 1;
    return expected_alpha(w, scale).unsqueeze(1) * pm;
  }

  Registry registry_;
  const Component* sign_ = nullptr;
};

TEST_P(SignQuantizer, DescribesItself) {
  // The build against the frozen headers really is a v1.0 plugin.
  auto entry = loaded_symbol<qforge_plugin_entry_fn>(sign_->library, QFORGE_ENTRY_SYMBOL_V1);
  ASSERT_NE(entry, nullptr);
  EXPECT_EQ(entry()->abi_minor, std::string(GetParam()) == "c_plugin_v1_0" ? 0u : QFORGE_ABI_MINOR);
  const qforge_component_desc* d = sign_->desc;
  EXPECT_EQ(d->kind, QFORGE_COMPONENT_QUANTIZER);
  EXPECT_STREQ(d->license, "MIT");
  EXPECT_NE(std::strstr(d->description, "XNOR-Net"), nullptr);
  ASSERT_EQ(d->param_count, 1u);
  const qforge_param_desc* p = d->params[0];
  EXPECT_EQ(p->struct_size, sizeof(qforge_param_desc));
  EXPECT_STREQ(p->name, "alpha_scale");
  EXPECT_EQ(p->type, QFORGE_PARAM_FLOAT);
  EXPECT_STREQ(p->default_value, "1.0");
  EXPECT_EQ(p->flags, uint32_t(QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX));
  EXPECT_EQ(p->min, 0.5);
  EXPECT_EQ(p->max, 2.0);
  EXPECT_EQ(qforge::host::check_schema(d->params, d->param_count), "");
  const qforge_quantizer* q = sign_->quantizer();
  ASSERT_NE(q, nullptr);
  ASSERT_NE(q->output_formats, nullptr);
  EXPECT_STREQ(q->output_formats[0], "org.qforge.test.sign/1");
  EXPECT_EQ(q->output_formats[1], nullptr);
}

TEST_P(SignQuantizer, QuantizesARandomMatrixThroughTheHost) {
  at::manual_seed(20240611);
  at::Tensor w = at::randn({16, 40});
  w.index_put_({3, 7}, 0.0f);  // sign(0) = +1

  for (double scale : {1.0, 0.5, 2.0}) {
    SCOPED_TRACE("alpha_scale " + std::to_string(scale));
    std::map<std::string, std::string> overrides;
    if (scale != 1.0) overrides["alpha_scale"] = fmt::format("{}", scale);
    ParamValues params(kSignId, sign_->desc->params, sign_->desc->param_count, overrides);
    qforge::host::QuantizeRequest request;
    request.layer_name = "model.layers.0.mlp.up_proj";
    request.weight = w;
    qforge::host::QuantResult r = qforge::host::quantize_layer(*sign_, request, params);

    EXPECT_EQ(r.format, "org.qforge.test.sign/1");
    auto meta = nlohmann::json::parse(r.metadata);
    EXPECT_EQ(meta.at("method"), "xnor-sign");
    EXPECT_EQ(meta.at("bits"), 1);
    EXPECT_EQ(meta.at("out_features"), 16);
    EXPECT_EQ(meta.at("in_features"), 40);
    EXPECT_DOUBLE_EQ(meta.at("alpha_scale").get<double>(), scale);

    ASSERT_EQ(r.tensors.count("signs"), 1u);
    ASSERT_EQ(r.tensors.count("alpha"), 1u);
    EXPECT_EQ(r.tensors.size(), 2u);
    const at::Tensor& signs = r.tensors.at("signs");
    const at::Tensor& alpha = r.tensors.at("alpha");
    EXPECT_EQ(signs.scalar_type(), at::kByte);
    EXPECT_EQ(signs.sizes(), w.sizes());
    EXPECT_TRUE(signs.equal(expected_signs(w)));
    EXPECT_EQ(alpha.scalar_type(), at::kFloat);
    ASSERT_EQ(alpha.dim(), 1);
    EXPECT_EQ(alpha.size(0), 16);
    EXPECT_TRUE(at::allclose(alpha, expected_alpha(w, scale), 1e-6, 1e-7));

    ASSERT_TRUE(r.dequantized.defined());
    EXPECT_EQ(r.dequantized.scalar_type(), at::kFloat);
    EXPECT_EQ(r.dequantized.sizes(), w.sizes());
    EXPECT_TRUE(at::allclose(r.dequantized, expected_dequantized(w, scale), 1e-6, 1e-7))
        << (r.dequantized - expected_dequantized(w, scale)).abs().max().item<float>();
    EXPECT_EQ(r.dequantized.index({3, 7}).item<float>(), alpha.index({3}).item<float>());

    ASSERT_EQ(r.metrics.count("mean_alpha"), 1u);
    EXPECT_NEAR(r.metrics.at("mean_alpha"), expected_alpha(w, scale).mean().item<double>(),
                1e-6);
  }
}

TEST_P(SignQuantizer, OutOfRangeScaleIsRefusedByTheSchema) {
  for (const char* bad : {"3", "0.25", "nan", "two"}) {
    SCOPED_TRACE(bad);
    try {
      ParamValues params(kSignId, sign_->desc->params, sign_->desc->param_count,
                         {{"alpha_scale", bad}});
      ADD_FAILURE() << "alpha_scale=" << bad << " was accepted";
    } catch (const qforge::host::UsageError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find("alpha_scale"), std::string::npos) << what;
      EXPECT_NE(what.find("0.5"), std::string::npos) << what;
      EXPECT_NE(what.find("2"), std::string::npos) << what;
      EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
  }
}

// ---- the C plugin through its raw vtable: strides, byte_offset, errors ------------

// A minimal quantize_output sink that keeps what it is given and releases it.
struct RawSink {
  qforge_quantize_output table{};
  std::string format, metadata;
  std::map<std::string, DLManagedTensor*> tensors;
  DLManagedTensor* dequantized = nullptr;
  int calls = 0;

  RawSink() {
    table.struct_size = sizeof table;
    table.host_data = this;
    table.set_format = [](const qforge_quantize_output* o, const char* id, const char* meta) {
      auto* s = static_cast<RawSink*>(o->host_data);
      ++s->calls;
      s->format = id;
      s->metadata = meta;
      return static_cast<qforge_status*>(nullptr);
    };
    table.add_tensor = [](const qforge_quantize_output* o, const char* name, DLManagedTensor* t) {
      auto* s = static_cast<RawSink*>(o->host_data);
      ++s->calls;
      s->tensors[name] = t;
      return static_cast<qforge_status*>(nullptr);
    };
    table.set_dequantized = [](const qforge_quantize_output* o, DLManagedTensor* t) {
      auto* s = static_cast<RawSink*>(o->host_data);
      ++s->calls;
      s->dequantized = t;
      return static_cast<qforge_status*>(nullptr);
    };
    table.set_metric = [](const qforge_quantize_output* o, const char*, double) {
      ++static_cast<RawSink*>(o->host_data)->calls;
      return static_cast<qforge_status*>(nullptr);
    };
  }
  ~RawSink() {
    for (auto& kv : tensors)
      if (kv.second->deleter) kv.second->deleter(kv.second);
    if (dequantized && dequantized->deleter) dequantized->deleter(dequantized);
  }
};

// Calls the quantizer on `weight`; returns the status code (OK for success).
int32_t call_raw(const Component& sign, const DLTensor& weight, RawSink& sink,
                 std::string* message = nullptr) {
  ParamValues params(kSignId, sign.desc->params, sign.desc->param_count, {});
  qforge_quantize_input in{};
  in.struct_size = sizeof in;
  in.layer_name = "raw";
  in.weight = &weight;
  in.params = params.data();
  in.param_count = params.size();
  const qforge_host* host = qforge::host::services();
  qforge_status* st = sign.quantizer()->quantize(host, &in, &sink.table);
  if (st == nullptr) return QFORGE_STATUS_OK;
  int32_t code = host->status_code(host, st);
  if (message) *message = host->status_message(host, st);
  host->status_destroy(host, st);
  return code;
}

TEST_P(SignQuantizer, HonoursStridesAndByteOffset) {
  // Storage: one float of padding, then a [40, 16] row-major matrix M; the
  // weight is W = Mᵀ, [16, 40] with strides {1, 16}, at byte_offset 4.
  at::manual_seed(7);
  at::Tensor storage = at::randn({1 + 40 * 16});
  at::Tensor w = storage.narrow(0, 1, 40 * 16).view({40, 16}).t();  // the logical weight
  int64_t shape[2] = {16, 40};
  int64_t strides[2] = {1, 16};
  DLTensor t{};
  t.data = storage.data_ptr<float>();
  t.device = {kDLCPU, 0};
  t.ndim = 2;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape;
  t.strides = strides;
  t.byte_offset = sizeof(float);

  RawSink sink;
  std::string message;
  ASSERT_EQ(call_raw(*sign_, t, sink, &message), QFORGE_STATUS_OK) << message;
  EXPECT_EQ(sink.format, "org.qforge.test.sign/1");
  ASSERT_EQ(sink.tensors.count("signs"), 1u);
  ASSERT_EQ(sink.tensors.count("alpha"), 1u);
  ASSERT_NE(sink.dequantized, nullptr);

  for (auto* m : {sink.tensors["signs"], sink.tensors["alpha"], sink.dequantized}) {
    const DLTensor& d = m->dl_tensor;
    EXPECT_EQ(d.device.device_type, kDLCPU);
    EXPECT_EQ(d.byte_offset, 0u);
    ASSERT_NE(d.strides, nullptr) << "qforge producers always fill strides";
    EXPECT_EQ(d.strides[d.ndim - 1], 1);
    EXPECT_NE(m->deleter, nullptr);
  }
  const DLTensor& sg = sink.tensors["signs"]->dl_tensor;
  ASSERT_EQ(sg.ndim, 2);
  EXPECT_EQ(sg.shape[0], 16);
  EXPECT_EQ(sg.shape[1], 40);
  EXPECT_EQ(sg.dtype.code, kDLUInt);
  EXPECT_EQ(sg.dtype.bits, 8);
  at::Tensor signs = at::from_blob(sg.data, {16, 40}, at::kByte);
  EXPECT_TRUE(signs.equal(expected_signs(w)));

  const DLTensor& al = sink.tensors["alpha"]->dl_tensor;
  ASSERT_EQ(al.ndim, 1);
  EXPECT_EQ(al.shape[0], 16);
  at::Tensor alpha = at::from_blob(al.data, {16}, at::kFloat);
  EXPECT_TRUE(at::allclose(alpha, expected_alpha(w, 1.0), 1e-6, 1e-7));

  const DLTensor& dq = sink.dequantized->dl_tensor;
  ASSERT_EQ(dq.ndim, 2);
  at::Tensor deq = at::from_blob(dq.data, {16, 40}, at::kFloat);
  EXPECT_TRUE(at::allclose(deq, expected_dequantized(w, 1.0), 1e-6, 1e-7));
}

TEST_P(SignQuantizer, RejectsInvalidInputWithAStatus) {
  std::vector<float> data(16 * 40, 1.0f);
  int64_t shape[2] = {16, 40};
  int64_t strides[2] = {40, 1};
  auto weight = [&] {
    DLTensor t{};
    t.data = data.data();
    t.device = {kDLCPU, 0};
    t.ndim = 2;
    t.dtype = {kDLFloat, 32, 1};
    t.shape = shape;
    t.strides = strides;
    return t;
  };
  std::string message;
  {
    RawSink sink;
    DLTensor t = weight();
    t.ndim = 1;
    EXPECT_EQ(call_raw(*sign_, t, sink, &message), QFORGE_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(message.find(kSignId), std::string::npos) << message;
    EXPECT_EQ(sink.calls, 0);
  }
  {
    RawSink sink;
    int64_t empty[2] = {0, 40};
    DLTensor t = weight();
    t.shape = empty;
    EXPECT_EQ(call_raw(*sign_, t, sink, &message), QFORGE_STATUS_INVALID_ARGUMENT) << message;
    EXPECT_EQ(sink.calls, 0);
  }
  {
    RawSink sink;
    DLTensor t = weight();
    t.dtype = {kDLFloat, 64, 1};
    EXPECT_EQ(call_raw(*sign_, t, sink, &message), QFORGE_STATUS_UNSUPPORTED) << message;
    EXPECT_EQ(sink.calls, 0);
  }
  {
    RawSink sink;
    data[5 * 40 + 3] = std::nanf("");
    DLTensor t = weight();
    EXPECT_EQ(call_raw(*sign_, t, sink, &message), QFORGE_STATUS_INVALID_ARGUMENT) << message;
    EXPECT_NE(message.find("NaN"), std::string::npos) << message;
    EXPECT_EQ(sink.calls, 0) << "nothing may be handed over on failure";
  }
}

INSTANTIATE_TEST_SUITE_P(HeadersOfEachMinor, SignQuantizer,
                         ::testing::Values("c_plugin", "c_plugin_v1_0"),
                         [](const ::testing::TestParamInfo<const char*>& i) {
                           return std::string(i.param) == "c_plugin" ? "Current" : "V1_0";
                         });

}  // namespace

// An init that never returns is given up on after QFORGE_PLUGIN_INIT_TIMEOUT
// seconds: refused with one line, and the next library still loads.
TEST(Registry, InitThatNeverReturnsIsRefusedAfterTheTimeLimit) {
  ScopedEnv limit("QFORGE_PLUGIN_INIT_TIMEOUT", "0.5");
  const std::string hanging = library_file("init_hangs", "init_hangs");
  ASSERT_TRUE(fs::exists(hanging)) << hanging << " was not built";
  const auto start = std::chrono::steady_clock::now();
  Registry registry;
  load_only(registry, {case_dir("init_hangs"), case_dir("c_plugin")});
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 20.0);
  const auto refused = refusals_of(registry, hanging);
  ASSERT_EQ(refused.size(), 1u) << describe(registry);
  EXPECT_NE(refused[0].reason.find("init did not return within 0.5 s"), std::string::npos)
      << refused[0].reason;
  EXPECT_EQ(registry.find("org.qforge.test.init-hangs"), nullptr);
  expect_c_plugin_loaded(registry);
}
