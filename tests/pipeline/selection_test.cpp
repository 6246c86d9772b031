// Layer selection (OneComp's priority order) and per-layer overrides.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/pipeline/selection.hpp"

namespace qh = qforge::host;
using Candidates = std::vector<std::pair<std::string, std::string>>;
using Names = std::vector<std::string>;

namespace {

// A Llama-like model of `blocks` blocks, in model order, plus lm_head and an
// embedding (not a linear layer).
Candidates llama(int blocks) {
  Candidates c = {{"model.embed_tokens", "embedding"}};
  for (int b = 0; b < blocks; ++b) {
    std::string p = "model.layers." + std::to_string(b) + ".";
    for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                          "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"})
      c.emplace_back(p + n, "linear");
  }
  c.emplace_back("lm_head", "linear");
  return c;
}

// The UsageError message of `f`, or a failure when it does not throw one.
std::string usage_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const qh::UsageError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no UsageError";
  return {};
}

}  // namespace

TEST(Selection, DefaultIsEveryLinearButLmHeadInModelOrder) {
  auto got = qh::select_layers(llama(2), {});
  ASSERT_EQ(got.size(), 14u);
  EXPECT_EQ(got.front(), "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(got[6], "model.layers.0.mlp.down_proj");
  EXPECT_EQ(got.back(), "model.layers.1.mlp.down_proj");
  for (const auto& n : got) {
    EXPECT_NE(n, "lm_head");
    EXPECT_NE(n, "model.embed_tokens");
  }
}

TEST(Selection, LmHeadIsSelectedWhenNotExcluded) {
  qh::LayerSelection sel;
  sel.exclude_names.clear();
  auto got = qh::select_layers(llama(1), sel);
  ASSERT_EQ(got.size(), 8u);
  EXPECT_EQ(got.back(), "lm_head");
}

TEST(Selection, IncludeNamesKeepModelOrderNotListOrder) {
  qh::LayerSelection sel;
  sel.include_names = {"model.layers.1.mlp.up_proj", "model.layers.0.self_attn.k_proj"};
  EXPECT_EQ(qh::select_layers(llama(2), sel),
            (Names{"model.layers.0.self_attn.k_proj", "model.layers.1.mlp.up_proj"}));
}

TEST(Selection, IncludeNameThatIsNoLayerIsAnErrorListingSome) {
  qh::LayerSelection sel;
  sel.include_names = {"model.layers.0.self_attn.q_proj", "model.layers.7.mlp.up_proj"};
  std::string msg = usage_error([&] { qh::select_layers(llama(2), sel); });
  EXPECT_NE(msg.find("'model.layers.7.mlp.up_proj' is not a layer"), std::string::npos) << msg;
  EXPECT_NE(msg.find("e.g. model.layers.0.self_attn.q_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("(15 in all)"), std::string::npos) << msg;
}

TEST(Selection, IncludeNameOfAnotherTypeSaysSo) {
  qh::LayerSelection sel;
  sel.include_names = {"model.embed_tokens"};
  std::string msg = usage_error([&] { qh::select_layers(llama(1), sel); });
  EXPECT_NE(msg.find("type 'embedding'"), std::string::npos) << msg;
}

TEST(Selection, IncludeKeywordsAnyOf) {
  qh::LayerSelection sel;
  sel.include_keywords = {"q_proj", "down_proj"};
  EXPECT_EQ(qh::select_layers(llama(2), sel),
            (Names{"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                   "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"}));
}

TEST(Selection, IncludeNamesThenKeywordsBothApply) {
  qh::LayerSelection sel;
  sel.include_names = {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"};
  sel.include_keywords = {"mlp."};
  EXPECT_EQ(qh::select_layers(llama(1), sel), (Names{"model.layers.0.mlp.up_proj"}));
}

TEST(Selection, ExclusionsComeAfterInclusions) {
  qh::LayerSelection sel;
  sel.include_keywords = {"self_attn"};
  sel.exclude_names = {"model.layers.0.self_attn.v_proj"};
  sel.exclude_keywords = {"o_proj", "layers.1."};
  EXPECT_EQ(qh::select_layers(llama(2), sel),
            (Names{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"}));

  // An included name that is also excluded is excluded (exclusion has the
  // later step), and then nothing is left.
  qh::LayerSelection both;
  both.include_names = {"model.layers.0.mlp.up_proj"};
  both.exclude_keywords = {"up_proj"};
  std::string msg = usage_error([&] { qh::select_layers(llama(1), both); });
  EXPECT_NE(msg.find("no layer is left"), std::string::npos) << msg;
  EXPECT_NE(msg.find("1 after include_names"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0 after exclude_keywords"), std::string::npos) << msg;
}

TEST(Selection, ExcludeNamesAreExactNotSubstrings) {
  qh::LayerSelection sel;
  sel.exclude_names = {"mlp.down_proj"};  // not a full name: removes nothing
  EXPECT_EQ(qh::select_layers(llama(1), sel).size(), 8u);
}

TEST(Selection, NumLayersKeepsTheFirstAfterTheFilters) {
  qh::LayerSelection sel;
  sel.exclude_keywords = {"self_attn"};
  sel.num_layers = 4;
  EXPECT_EQ(qh::select_layers(llama(2), sel),
            (Names{"model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj",
                   "model.layers.0.mlp.down_proj", "model.layers.1.mlp.gate_proj"}));
  sel.num_layers = 6;  // exactly what is left
  EXPECT_EQ(qh::select_layers(llama(2), sel).size(), 6u);
}

TEST(Selection, NumLayersOutOfRangeIsAnError) {
  qh::LayerSelection sel;
  sel.num_layers = 15;  // 14 left
  std::string msg = usage_error([&] { qh::select_layers(llama(2), sel); });
  EXPECT_NE(msg.find("only 14 layers are left"), std::string::npos) << msg;
  for (int64_t bad : {0, -2}) {
    sel.num_layers = bad;
    msg = usage_error([&] { qh::select_layers(llama(2), sel); });
    EXPECT_NE(msg.find("num_layers"), std::string::npos) << msg;
  }
}

TEST(Selection, UnknownTypeListsTheKnownOnes) {
  qh::LayerSelection sel;
  sel.target_types = {"linear", "conv2d"};
  std::string msg = usage_error([&] { qh::select_layers(llama(1), sel); });
  EXPECT_NE(msg.find("unknown layer type 'conv2d'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("known: linear"), std::string::npos) << msg;
  sel.target_types.clear();
  msg = usage_error([&] { qh::select_layers(llama(1), sel); });
  EXPECT_NE(msg.find("no target layer types"), std::string::npos) << msg;
}

TEST(Selection, NothingLeftSaysWhichStep) {
  qh::LayerSelection sel;
  sel.include_keywords = {"no_such_thing"};
  std::string msg = usage_error([&] { qh::select_layers(llama(1), sel); });
  EXPECT_NE(msg.find("9 candidates"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8 of type linear"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0 after include_keywords"), std::string::npos) << msg;
  // No candidates at all.
  msg = usage_error([&] { qh::select_layers({}, qh::LayerSelection{}); });
  EXPECT_NE(msg.find("no layer is left"), std::string::npos) << msg;
}

// ------------------------------------------------------------ overrides --

TEST(Overrides, SubstringWithoutGlobCharacters) {
  EXPECT_TRUE(qh::override_matches("model.layers.3.mlp.down_proj", "mlp.down_proj"));
  EXPECT_TRUE(qh::override_matches("model.layers.3.mlp.down_proj", "layers.3."));
  EXPECT_FALSE(qh::override_matches("model.layers.3.mlp.down_proj", "up_proj"));
  EXPECT_TRUE(qh::override_matches("lm_head", "lm_head"));
}

TEST(Overrides, GlobMatchesTheWholeName) {
  const std::string n = "model.layers.12.self_attn.q_proj";
  EXPECT_TRUE(qh::override_matches(n, "*"));
  EXPECT_TRUE(qh::override_matches(n, "model.layers.*.self_attn.q_proj"));
  EXPECT_TRUE(qh::override_matches(n, "*q_proj"));
  EXPECT_TRUE(qh::override_matches(n, "*.self_attn.*"));  // '*' crosses dots
  EXPECT_FALSE(qh::override_matches(n, "layers.*"));      // anchored at the start
  EXPECT_FALSE(qh::override_matches(n, "*self_attn"));    // and at the end
  EXPECT_TRUE(qh::override_matches(n, "model.layers.??.self_attn.q_proj"));
  EXPECT_FALSE(qh::override_matches(n, "model.layers.?.self_attn.q_proj"));
  EXPECT_TRUE(qh::override_matches("model.layers.1.mlp.up_proj", "model.layers.?.mlp.*"));
  EXPECT_FALSE(qh::override_matches("model.layers.10.mlp.up_proj", "model.layers.?.mlp.*"));
  EXPECT_TRUE(qh::override_matches("", "*"));
  EXPECT_FALSE(qh::override_matches("", "?"));
  EXPECT_TRUE(qh::override_matches("abc", "a**c"));
}

TEST(Overrides, GlobBacktrackingStaysFast) {
  std::string name(2000, 'a');
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(qh::override_matches(name, "*a*a*a*a*a*a*a*a*b"));
  EXPECT_TRUE(qh::override_matches(name + "b", "*a*a*a*a*a*a*a*a*b"));
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1.0);
}

TEST(Overrides, LaterOverridesWin) {
  std::vector<qh::LayerOverride> o = {
      {"*", {{"bits", "4"}, {"group_size", "128"}}},
      {"mlp.down_proj", {{"bits", "8"}}},
      {"model.layers.0.*", {{"group_size", "32"}, {"sym", "false"}}},
  };
  using M = std::map<std::string, std::string>;
  EXPECT_EQ(qh::overrides_for("model.layers.0.mlp.down_proj", o),
            (M{{"bits", "8"}, {"group_size", "32"}, {"sym", "false"}}));
  EXPECT_EQ(qh::overrides_for("model.layers.1.mlp.down_proj", o),
            (M{{"bits", "8"}, {"group_size", "128"}}));
  EXPECT_EQ(qh::overrides_for("model.layers.1.mlp.up_proj", o),
            (M{{"bits", "4"}, {"group_size", "128"}}));
  // Order matters: the catch-all last wins over everything before it.
  std::vector<qh::LayerOverride> r = {o[1], o[0]};
  EXPECT_EQ(qh::overrides_for("model.layers.1.mlp.down_proj", r).at("bits"), "4");
  EXPECT_TRUE(qh::overrides_for("x", {}).empty());
}

TEST(Overrides, Parse) {
  auto o = qh::parse_override("model.layers.*.mlp.down_proj:bits=8,group_size=64");
  EXPECT_EQ(o.pattern, "model.layers.*.mlp.down_proj");
  EXPECT_EQ(o.params, (std::map<std::string, std::string>{{"bits", "8"}, {"group_size", "64"}}));

  o = qh::parse_override(" lm_head : bits = 8 , scheme=a:b ");  // trimmed; ':' in a value
  EXPECT_EQ(o.pattern, "lm_head");
  EXPECT_EQ(o.params, (std::map<std::string, std::string>{{"bits", "8"}, {"scheme", "a:b"}}));
}

TEST(Overrides, ParseErrorsQuoteTheText) {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {"bits=8", "no ':'"},
      {":bits=8", "pattern is empty"},
      {"q_proj:", "no parameters"},
      {"q_proj:  ", "no parameters"},
      {"q_proj:bits", "'bits' is not name=value"},
      {"q_proj:bits=8,", "'' is not name=value"},
      {"q_proj:=8", "no parameter name"},
      {"q_proj:bits=", "'bits' has no value"},
      {"q_proj:bits=8,bits=4", "'bits' is given twice"},
  };
  for (const auto& c : cases) {
    std::string msg = usage_error([&] { qh::parse_override(c.text); });
    EXPECT_NE(msg.find(std::string("override '") + c.text + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.says), std::string::npos) << c.text << ": " << msg;
  }
}
