// Parameter schema checks, parsing and error messages (host/src/params.cpp).
#include <gtest/gtest.h>

#include <qforge/cpp/plugin.hpp>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/plugins/params.hpp"

using qforge::host::check_schema;
using qforge::host::ParamValues;
using qforge::host::UsageError;

namespace {

const char* const kModes[] = {"fast", "exact", nullptr};

struct Schema {
  std::vector<qforge_param_desc> descs;
  std::vector<const qforge_param_desc*> ptrs;
  Schema(std::initializer_list<qforge_param_desc> d) : descs(d) {
    for (auto& p : descs) ptrs.push_back(&p);
  }
  const qforge_param_desc* const* data() const { return ptrs.data(); }
  uint32_t size() const { return static_cast<uint32_t>(ptrs.size()); }
};

Schema full_schema() {
  return Schema{
      qforge::param_range(QFORGE_PARAM_INT, "bits", "bit width", "4", 2, 8),
      qforge::param_range(QFORGE_PARAM_FLOAT, "damp", "dampening", "0.01", 0, 1),
      qforge::param(QFORGE_PARAM_BOOL, "sym", "symmetric", "true"),
      qforge::param(QFORGE_PARAM_ENUM, "mode", "mode", "fast", kModes),
      qforge::param(QFORGE_PARAM_STRING, "note", "free text", ""),
      qforge::param(QFORGE_PARAM_PATH, "table", "a file", nullptr, nullptr,
                    QFORGE_PARAM_FLAG_REQUIRED),
      qforge::param_range(QFORGE_PARAM_INT_LIST, "sizes", "sizes", "32,64", 1, 1024),
      qforge::param(QFORGE_PARAM_FLOAT_LIST, "ratios", "ratios", ""),
      qforge::param(QFORGE_PARAM_STRING_LIST, "names", "names", "a, b"),
  };
}

std::string usage_message(const std::function<void()>& f) {
  try {
    f();
  } catch (const UsageError& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Params, WellFormedSchemaPasses) {
  Schema s = full_schema();
  EXPECT_EQ(check_schema(s.data(), s.size()), "");
}

TEST(Params, DefaultsAndOverridesParse) {
  Schema s = full_schema();
  ParamValues v("t", s.data(), s.size(),
                {{"table", "/x"}, {"bits", "3"}, {"sym", "off"}, {"ratios", "0.5, 1e-3"}});
  qforge::Params p(v.data(), v.size());
  EXPECT_EQ(p.get_int("bits"), 3);
  EXPECT_DOUBLE_EQ(p.get_float("damp"), 0.01);
  EXPECT_FALSE(p.get_bool("sym"));
  EXPECT_EQ(p.get_enum("mode"), "fast");
  EXPECT_EQ(p.get_path("table"), "/x");
  EXPECT_EQ(p.get_ints("sizes"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(p.get_floats("ratios"), (std::vector<double>{0.5, 1e-3}));
  EXPECT_EQ(p.get_strings("names"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(v.text().at("bits"), "3");
  for (uint32_t k = 0; k < v.size(); ++k) EXPECT_EQ(v.data()[k]->struct_size, sizeof(qforge_param_value));
}

TEST(Params, BadValuesNameTheParameterAndWhatItAccepts) {
  Schema s = full_schema();
  auto make = [&](std::map<std::string, std::string> o) {
    o.emplace("table", "/x");
    return [=, &s] { ParamValues v("org.t", s.data(), s.size(), o); };
  };
  std::string m = usage_message(make({{"bits", "9"}}));
  EXPECT_NE(m.find("'bits'"), std::string::npos) << m;
  EXPECT_NE(m.find("[2, 8]"), std::string::npos) << m;
  EXPECT_NE(usage_message(make({{"bits", "4.5"}})).find("integer"), std::string::npos);
  EXPECT_NE(usage_message(make({{"bits", "99999999999999999999"}})).find("bits"), std::string::npos);
  EXPECT_NE(usage_message(make({{"damp", "nan"}})).find("damp"), std::string::npos);
  EXPECT_NE(usage_message(make({{"sym", "maybe"}})).find("true or false"), std::string::npos);
  EXPECT_NE(usage_message(make({{"mode", "slow"}})).find("{fast, exact}"), std::string::npos);
  EXPECT_NE(usage_message(make({{"sizes", "32,0"}})).find("each in [1, 1024]"), std::string::npos);
  EXPECT_NE(usage_message(make({{"nope", "1"}})).find("no parameter 'nope'"), std::string::npos);
  std::string req = usage_message([&] { ParamValues v("org.t", s.data(), s.size(), {}); });
  EXPECT_NE(req.find("'table' is required"), std::string::npos) << req;
}

TEST(Params, MalformedSchemasAreRejected) {
  auto reason = [](qforge_param_desc d) {
    const qforge_param_desc* p = &d;
    return check_schema(&p, 1);
  };
  EXPECT_NE(reason(qforge::param(QFORGE_PARAM_ENUM, "m", "h", "a")).find("choices"), std::string::npos);
  EXPECT_NE(reason(qforge::param_range(QFORGE_PARAM_INT, "b", "h", "9", 2, 8)).find("default"),
            std::string::npos);
  EXPECT_NE(reason(qforge::param(QFORGE_PARAM_INT, "Bad-Name", "h", "1")).find("name"), std::string::npos);
  EXPECT_NE(reason(qforge::param(QFORGE_PARAM_INT, "b", "h", nullptr)).find("default"), std::string::npos);
  EXPECT_NE(reason(qforge::param(99, "b", "h", "1")).find("type"), std::string::npos);
  EXPECT_NE(reason(qforge::param_range(QFORGE_PARAM_FLOAT, "f", "h", "1", 2, 1)).find("min"),
            std::string::npos);
  qforge_param_desc small = qforge::param(QFORGE_PARAM_INT, "b", "h", "1");
  small.struct_size = 8;
  EXPECT_NE(reason(small).find("struct_size"), std::string::npos);
  Schema dup{qforge::param(QFORGE_PARAM_INT, "b", "h", "1"), qforge::param(QFORGE_PARAM_INT, "b", "h", "2")};
  EXPECT_NE(check_schema(dup.data(), dup.size()).find("twice"), std::string::npos);
}

TEST(Params, SplitAssignment) {
  EXPECT_EQ(qforge::host::split_assignment("bits=4"), (std::pair<std::string, std::string>{"bits", "4"}));
  EXPECT_EQ(qforge::host::split_assignment("s=a=b").second, "a=b");
  EXPECT_THROW(qforge::host::split_assignment("bits"), UsageError);
  EXPECT_THROW(qforge::host::split_assignment("=4"), UsageError);
}
