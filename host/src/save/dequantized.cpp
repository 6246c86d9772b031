// --save-format dequantized: every linear as its dequantized float16 weight;
// any Llama loader reads it. No quantization_config.
#include "formats.hpp"

namespace qforge::host {
namespace {

class Dequantized final : public SaveFormat {
 public:
  std::string name() const override { return "dequantized"; }
  NamedTensors packed_linear(const std::string&, const QuantResult&) override { return {}; }
};

}  // namespace

std::unique_ptr<SaveFormat> make_dequantized_format() { return std::make_unique<Dequantized>(); }

}  // namespace qforge::host
