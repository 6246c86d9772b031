// sparse_checkpoint_check DIR N:M: reads a saved checkpoint's files and
// checks that every linear of every block holds exactly N zeros in every
// group of M consecutive inputs of every row, after decoding its weight
// independently of qforge's codecs and kernels, from the format descriptions:
//   dense      <linear>.weight F16 / BF16 / F32: the weight itself;
//   FP8        <linear>.weight F8_E4M3 (+ weight_scale): 0 where the byte is
//              0x00 or 0x80 (e4m3's ±0; the scales are > 0);
//   INT8       <linear>.weight I8 (+ weight_scale): 0 where the code is 0;
//   GPTQ v1    qweight / qzeros / scales / g_idx (qforge/formats/gptq_v1.h,
//              bits from config.json): W = s · (q − (z + 1)), codes read bit
//              by bit from their LSB-first streams.
// Prints one line per linear, then "sparsity F" (zeros / weights over them
// all); exits 1 when a group breaks the pattern, 2 on bad use.
#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

#include "qforge_host/io/safetensors.hpp"
#include "qforge_host/model/architecture.hpp"
#include "qforge_host/model/config.hpp"

namespace {

namespace qh = qforge::host;

// Code i of the bit stream whose word k is word(k): `bits` bits from bit i·bits.
template <class Word>
int64_t stream_code(const Word& word, int64_t i, int bits) {
  int64_t v = 0;
  for (int t = 0; t < bits; ++t) {
    const int64_t s = i * bits + t;
    v |= static_cast<int64_t>((static_cast<uint32_t>(word(s / 32)) >> (s % 32)) & 1u) << t;
  }
  return v;
}

// Where the GPTQ v1 weight of `name` is 0: s == 0 or q == z + 1.
at::Tensor gptq_zeros(const qh::TensorStore& store, const std::string& name, int bits) {
  const at::Tensor qweight = store.view(name + ".qweight").contiguous();
  const at::Tensor qzeros = store.view(name + ".qzeros").contiguous();
  const at::Tensor scales = store.load(name + ".scales", at::kFloat).contiguous();
  const at::Tensor g_idx = store.load(name + ".g_idx", at::kInt).contiguous();
  const int64_t in = g_idx.size(0), out = qweight.size(1), zwords = qzeros.size(1);
  const int32_t* qw = qweight.data_ptr<int32_t>();
  const int32_t* qz = qzeros.data_ptr<int32_t>();
  const float* s = scales.data_ptr<float>();
  at::Tensor zero = at::empty({out, in}, at::kBool);
  bool* z = zero.data_ptr<bool>();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      const int64_t g = g_idx.data_ptr<int32_t>()[i];
      const int64_t q = stream_code([&](int64_t k) { return qw[k * out + o]; }, i, bits);
      const int64_t zp = stream_code([&](int64_t k) { return qz[g * zwords + k]; }, o, bits) + 1;
      z[o * in + i] = s[g * out + o] == 0.f || q == zp;
    }
  return zero;
}

// Where the stored weight of `name` decodes to 0.
at::Tensor weight_zeros(const qh::TensorStore& store, const std::string& name, int gptq_bits) {
  if (store.contains(name + ".qweight")) return gptq_zeros(store, name, gptq_bits);
  if (!store.contains(name + ".weight"))
    throw std::runtime_error(name + ": neither a dense/FP8/INT8 weight nor a GPTQ qweight");
  const qh::StDtype dtype = store.info(name + ".weight").dtype;
  const at::Tensor w = store.view(name + ".weight");
  switch (dtype) {
    case qh::StDtype::F8_E4M3: return w.bitwise_and(0x7F).eq(0);
    case qh::StDtype::I8: return w.eq(0);
    case qh::StDtype::F16:
    case qh::StDtype::BF16:
    case qh::StDtype::F32: return w.to(at::kFloat).eq(0);
    default: throw std::runtime_error(name + ".weight: unexpected dtype " + qh::st_dtype_name(dtype));
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = 0, m = 0;
  if (argc != 3 || std::sscanf(argv[2], "%d:%d", &n, &m) != 2 || n < 1 || m <= n) {
    std::cerr << "usage: sparse_checkpoint_check DIR N:M\n";
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const qh::ModelConfig config = qh::load_config(dir);
    const nlohmann::json cfg = nlohmann::json::parse(std::ifstream(dir + "/config.json"));
    const auto& q = cfg.value("quantization_config", nlohmann::json::object());
    const int bits = q.value("quant_method", "") == "gptq" ? q.value("bits", 0) : 0;
    const qh::TensorStore store(dir);
    int64_t zeros = 0, total = 0, bad_layers = 0;
    for (int64_t b = 0; b < config.num_layers; ++b)
      for (const std::string& name : config.arch.layout->linear_names(b)) {
        const at::Tensor z = weight_zeros(store, name, bits);
        const int64_t out = z.size(0), in = z.size(1);
        if (in % m != 0) throw std::runtime_error(name + ": input width not a multiple of M");
        const at::Tensor per_group = z.reshape({out, in / m, m}).sum(2);
        const int64_t wrong = per_group.ne(n).sum().item<int64_t>();
        zeros += z.sum().item<int64_t>();
        total += z.numel();
        std::cout << name << ": " << per_group.numel() << " groups of " << m << ", " << wrong
                  << " without exactly " << n << " zeros\n";
        bad_layers += wrong > 0;
      }
    std::printf("sparsity %.17g\n", static_cast<double>(zeros) / static_cast<double>(total));
    return bad_layers > 0 ? 1 : 0;
  } catch (const std::exception& e) {
    std::cerr << "sparse_checkpoint_check: " << e.what() << "\n";
    return 2;
  }
}
