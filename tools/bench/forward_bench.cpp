// Forward-pass throughput and peak RSS of the model runtime.
//
//   qforge_bench_forward --model DIR            a Hugging Face directory
//   qforge_bench_forward --synthetic llama-3.2-1b [--keep DIR] [--write-only]
//       random weights in the shape of Llama-3.2-1B (bf16 safetensors written
//       once to a temporary directory, float32 compute)
//   qforge_bench_forward --synthetic tiny --keep DIR --write-only
//       a tiny random Llama with a byte-level tokenizer (the quickstart's
//       fallback when no model is available)
//
// Prints prefill tokens/s (batch 1, --seqlen tokens), decode tokens/s (one
// token at a time through the KV cache), and, as the same-run baseline, the
// time of the same linear layers as bare at::matmul calls (what the forward
// pass cannot beat on this machine), plus peak RSS next to the model's size.
// Then the two workloads of a quantize run with --eval: evaluation (batches of
// --eval-batch windows of --seqlen tokens through the whole model, as `qforge
// eval` runs them) and calibration (batches of 4 sequences through every
// block, as the pipeline's forward passes), in tokens/s.
// --default-malloc keeps glibc's allocation defaults instead of what the CLI
// does (host/base/allocator.hpp), to measure the difference.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "qforge_host/base/allocator.hpp"
#include "qforge_host/model/model.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

double secs(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

json llama_3_2_1b() {
  return json{{"model_type", "llama"}, {"hidden_size", 2048}, {"intermediate_size", 8192},
              {"num_hidden_layers", 16}, {"num_attention_heads", 32}, {"num_key_value_heads", 8},
              {"head_dim", 64}, {"vocab_size", 128256}, {"max_position_embeddings", 131072},
              {"rms_norm_eps", 1e-5}, {"rope_theta", 500000.0}, {"tie_word_embeddings", true},
              {"hidden_act", "silu"}, {"bos_token_id", 128000}, {"eos_token_id", 128001},
              {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                                {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}}}};
}

// A small Llama with random weights and a byte-level tokenizer (256 byte
// tokens, no merges, "<s>" as BOS), for trying the tools without a model.
json tiny_random() {
  return json{{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 172},
              {"num_hidden_layers", 4}, {"num_attention_heads", 8}, {"num_key_value_heads", 4},
              {"head_dim", 8}, {"vocab_size", 257}, {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0}, {"tie_word_embeddings", true}, {"hidden_act", "silu"},
              {"bos_token_id", 256}, {"eos_token_id", 256},
              {"qforge_note", "RANDOM WEIGHTS written by qforge_bench_forward --synthetic tiny"}};
}

// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest
// to code points from 256 up, so every byte is one visible character.
void write_byte_tokenizer(const fs::path& dir) {
  json vocab = json::object();
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    int cp = printable ? b : next++;
    std::string utf8;
    if (cp < 0x80) utf8 = std::string(1, static_cast<char>(cp));
    else utf8 = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
    vocab[utf8] = b;
  }
  vocab["<s>"] = 256;
  json tok = {{"version", "1.0"},
              {"added_tokens", json::array({{{"id", 256}, {"content", "<s>"}, {"single_word", false},
                                             {"lstrip", false}, {"rstrip", false},
                                             {"normalized", false}, {"special", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false},
                                 {"trim_offsets", true}, {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}}},
              {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  std::ofstream(dir / "tokenizer.json") << tok.dump();
  std::ofstream(dir / "tokenizer_config.json") << json{{"bos_token", "<s>"}}.dump();
}

// Writes random bf16 weights for `c` into `dir` (config.json + model.safetensors).
void write_synthetic(const json& c, const fs::path& dir) {
  fs::create_directories(dir);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  int64_t H = c["hidden_size"], I = c["intermediate_size"], V = c["vocab_size"];
  int64_t nh = c["num_attention_heads"], nkv = c["num_key_value_heads"], D = c["head_dim"];
  std::vector<std::pair<std::string, at::Tensor>> w;
  auto rnd = [&](std::vector<int64_t> s) { return at::normal(0.0, 0.02, s, gen).to(at::kBFloat16); };
  w.emplace_back("model.embed_tokens.weight", rnd({V, H}));
  w.emplace_back("model.norm.weight", at::ones({H}, at::kBFloat16));
  for (int64_t l = 0; l < c["num_hidden_layers"].get<int64_t>(); ++l) {
    std::string p = fmt::format("model.layers.{}.", l);
    w.emplace_back(p + "input_layernorm.weight", at::ones({H}, at::kBFloat16));
    w.emplace_back(p + "post_attention_layernorm.weight", at::ones({H}, at::kBFloat16));
    w.emplace_back(p + "self_attn.q_proj.weight", rnd({nh * D, H}));
    w.emplace_back(p + "self_attn.k_proj.weight", rnd({nkv * D, H}));
    w.emplace_back(p + "self_attn.v_proj.weight", rnd({nkv * D, H}));
    w.emplace_back(p + "self_attn.o_proj.weight", rnd({H, nh * D}));
    w.emplace_back(p + "mlp.gate_proj.weight", rnd({I, H}));
    w.emplace_back(p + "mlp.up_proj.weight", rnd({I, H}));
    w.emplace_back(p + "mlp.down_proj.weight", rnd({H, I}));
  }
  qforge::host::save_safetensors((dir / "model.safetensors").string(), w);
  std::ofstream(dir / "config.json") << c.dump(2);
}

// The same linear layers as bare matmuls on x [T, hidden]: the baseline.
double linear_only_seconds(const qforge::host::Model& m, int64_t T) {
  const auto& c = m.config();
  at::Tensor x = at::randn({T, c.hidden_size});
  at::Tensor xi = at::randn({T, c.intermediate_size});
  auto t0 = Clock::now();
  for (const auto& b : m.blocks()) {
    for (const auto* l : {&b.q_proj, &b.k_proj, &b.v_proj, &b.gate_proj, &b.up_proj})
      (void)at::matmul(x, l->weight.t());
    (void)at::matmul(at::randn({T, c.num_heads * c.head_dim}), b.o_proj.weight.t());
    (void)at::matmul(xi, b.down_proj.weight.t());
  }
  return secs(t0);
}

// Tokens/s of `batches` forward passes of [batch, T] random ids through the
// whole model (evaluation) or through every block (calibration).
double eval_tokens_per_s(const qforge::host::Model& m, int64_t batch, int64_t T, int batches) {
  at::Tensor ids = at::randint(0, m.config().vocab_size, {batch, T}, at::kLong);
  (void)m.forward(ids.narrow(0, 0, 1).narrow(1, 0, std::min<int64_t>(8, T)));  // warm-up
  auto t0 = Clock::now();
  for (int k = 0; k < batches; ++k) (void)m.forward(ids);
  return static_cast<double>(batches * batch * T) / secs(t0);
}
double calibration_tokens_per_s(const qforge::host::Model& m, int64_t T, int batches) {
  const int64_t chunk = 4;
  at::Tensor ids = at::randint(0, m.config().vocab_size, {chunk, T}, at::kLong);
  auto t0 = Clock::now();
  for (int k = 0; k < batches; ++k) {
    at::Tensor h = m.embed(ids);
    for (size_t b = 0; b < m.blocks().size(); ++b) h = m.block_forward(b, h, 0, nullptr, nullptr);
  }
  return static_cast<double>(batches * chunk * T) / secs(t0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, synthetic, keep;
  int64_t seqlen = 256, decode = 32;
  bool write_only = false;  // --synthetic with --keep DIR: only write the weights
  bool default_malloc = false;
  int64_t eval_batch = 8;
  int batches = 2;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--model") model_dir = next();
    else if (a == "--synthetic") synthetic = next();
    else if (a == "--keep") keep = next();
    else if (a == "--seqlen") seqlen = std::stoll(next());
    else if (a == "--decode") decode = std::stoll(next());
    else if (a == "--write-only") write_only = true;
    else if (a == "--default-malloc") default_malloc = true;
    else if (a == "--eval-batch") eval_batch = std::stoll(next());
    else if (a == "--batches") batches = std::stoi(next());
    else {
      fmt::print(stderr, "usage: {} (--model DIR | --synthetic llama-3.2-1b [--keep DIR]) "
                 "[--seqlen N] [--decode N] [--eval-batch N] [--batches N] [--default-malloc] "
                 "[--write-only]\n", argv[0]);
      return 2;
    }
  }
  if (!default_malloc) qforge::host::keep_large_allocations_in_heap();
  at::set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  fs::path tmp;
  std::string label = model_dir;
  if (!synthetic.empty()) {
    if (synthetic != "llama-3.2-1b" && synthetic != "tiny") {
      fmt::print(stderr, "unknown synthetic shape '{}' (known: llama-3.2-1b, tiny)\n", synthetic);
      return 2;
    }
    tmp = keep.empty() ? fs::temp_directory_path() / fmt::format("qforge_bench_{}", getpid()) : fs::path(keep);
    if (!fs::exists(tmp / "model.safetensors")) {
      auto t0 = Clock::now();
      if (synthetic == "tiny") {
        write_synthetic(tiny_random(), tmp);
        write_byte_tokenizer(tmp);
      } else {
        write_synthetic(llama_3_2_1b(), tmp);
      }
      fmt::print("wrote a {} model with RANDOM weights (bf16) to {} in {:.1f} s\n", synthetic,
                 tmp.string(), secs(t0));
    }
    model_dir = tmp.string();
    label = synthetic == "tiny" ? "tiny Llama (random weights)"
                                : "synthetic Llama-3.2-1B shape (random weights)";
    if (write_only) return 0;
  }
  if (model_dir.empty()) {
    fmt::print(stderr, "give --model DIR or --synthetic llama-3.2-1b\n");
    return 2;
  }
  double rss_before = peak_rss_mib();
  auto t0 = Clock::now();
  auto model = qforge::host::Model::load(model_dir, at::kFloat);
  double load_s = secs(t0);
  const auto& c = model.config();
  seqlen = std::min(seqlen, c.max_position_embeddings - decode);
  double params = static_cast<double>(model.parameter_count());

  at::Tensor ids = at::randint(0, c.vocab_size, {1, seqlen}, at::kLong);
  (void)model.forward(ids.narrow(1, 0, std::min<int64_t>(8, seqlen)));  // warm-up
  t0 = Clock::now();
  auto cache = model.new_cache(1, seqlen + decode);
  at::Tensor logits = model.forward(ids, &cache);
  double prefill_s = secs(t0);
  t0 = Clock::now();
  for (int64_t k = 0; k < decode; ++k)
    logits = model.forward(logits[0][-1].argmax().view({1, 1}), &cache);
  double decode_s = secs(t0);
  double lin_prefill = linear_only_seconds(model, seqlen);
  double lin_decode = linear_only_seconds(model, 1);

  fmt::print("model:    {} ({:.1f} M parameters, {:.1f} MiB as float32), {} threads\n", label,
             params / 1e6, params * 4 / 1048576.0, at::get_num_threads());
  fmt::print("load:     {:.2f} s\n", load_s);
  fmt::print("prefill:  {:.1f} tokens/s ({} tokens in {:.3f} s); linear layers alone as at::matmul: "
             "{:.1f} tokens/s -> forward reaches {:.0f}% of it\n",
             seqlen / prefill_s, seqlen, prefill_s, seqlen / lin_prefill, 100 * lin_prefill / prefill_s);
  fmt::print("decode:   {:.2f} tokens/s ({} tokens, KV cache); linear layers alone: {:.2f} tokens/s "
             "-> {:.0f}%\n",
             decode / decode_s, decode, 1 / lin_decode, 100 * lin_decode * decode / decode_s);
  const int64_t T = std::min<int64_t>(seqlen + decode, c.max_position_embeddings);
  fmt::print("eval:     {:.0f} tokens/s ({} batches of {} windows of {} tokens, whole model)\n",
             eval_tokens_per_s(model, eval_batch, T, batches), batches, eval_batch, T);
  fmt::print("calibrate: {:.0f} tokens/s ({} batches of 4 sequences of {} tokens, every block)\n",
             calibration_tokens_per_s(model, T, batches), batches, T);
  fmt::print("allocator: {}\n", default_malloc ? "glibc defaults (--default-malloc)"
                                                : "large allocations kept in the heap (as the CLI)");
  fmt::print("peak RSS: {:.0f} MiB (before loading {:.0f} MiB; weights as float32 {:.0f} MiB)\n",
             peak_rss_mib(), rss_before, params * 4 / 1048576.0);
  if (!tmp.empty() && keep.empty()) fs::remove_all(tmp);
  return 0;
}
