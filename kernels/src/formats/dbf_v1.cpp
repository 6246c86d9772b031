// The row of "org.qforge.dbf/1" (sdk/include/qforge/formats/dbf_v1.h): two
// sign planes, S_B [k, in] acting first and S_A [out, k], with the scale
// vectors s0 [in], s2 [k], s4 [out] — the SignChain
// y = s4 ⊙ (S_A · (s2 ⊙ (S_B · (s0 ⊙ x)))) (+ bias).
#include <qforge/cpp/plugin.hpp>
#include <qforge/formats/dbf_v1.h>

#include <nlohmann/json.hpp>

#include <string>

#include "formats.hpp"

namespace qforge::kernels::formats {
namespace {

constexpr const char* kId = QFORGE_FORMAT_DBF_V1;

SignChain describe(const nlohmann::json& m,
                   const std::vector<std::pair<std::string, TensorData>>& tensors) {
  const int64_t in = meta_int(m, kId, QFORGE_DBF_V1_IN_FEATURES, 1, kMaxAffineDim);
  const int64_t out = meta_int(m, kId, QFORGE_DBF_V1_OUT_FEATURES, 1, kMaxAffineDim);
  const int64_t k = meta_int(m, kId, QFORGE_DBF_V1_K, 1, kMaxAffineDim);
  const std::vector<DLDataType> bytes = {{kDLUInt, 8, 1}};
  const std::vector<DLDataType> floats = {{kDLFloat, 16, 1}, {kDLFloat, 32, 1}, {kDLBfloat, 16, 1}};
  const std::string sizes = " (k = " + std::to_string(k) + ", in = " + std::to_string(in) +
                            ", out = " + std::to_string(out) + ")";
  const std::vector<const TensorData*> t = match_tensors(
      kId,
      {{QFORGE_DBF_V1_SIGN_A, bytes, {out, (k + 7) / 8}, true, sizes},
       {QFORGE_DBF_V1_SIGN_B, bytes, {k, (in + 7) / 8}, true, sizes},
       {QFORGE_DBF_V1_S4, floats, {out}, true, sizes},
       {QFORGE_DBF_V1_S2, floats, {k}, true, sizes},
       {QFORGE_DBF_V1_S0, floats, {in}, true, sizes},
       {QFORGE_DBF_V1_BIAS, floats, {out}, false, sizes}},
      tensors);
  std::vector<SignPlane> planes;
  planes.emplace_back(static_cast<const uint8_t*>(t[1]->data), k, in);   // S_B first
  planes.emplace_back(static_cast<const uint8_t*>(t[0]->data), out, k);  // then S_A
  return SignChain(std::move(planes), {to_float(*t[4]), to_float(*t[3]), to_float(*t[2])},
                   t[5] != nullptr ? to_float(*t[5]) : std::vector<float>{});
}

}  // namespace

const SignFormat dbf_v1 = {kId, &describe, {QFORGE_DBF_V1_S0, QFORGE_DBF_V1_S2, QFORGE_DBF_V1_S4},
                           {QFORGE_DBF_V1_SIGN_B, QFORGE_DBF_V1_SIGN_A}};

}  // namespace qforge::kernels::formats
