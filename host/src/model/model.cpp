// The Llama-family decoder (qforge_host/model/model.hpp): Llama 2/3, Mistral,
// Qwen2, Qwen3 with grouped-query attention, RoPE (default, linear, llama3
// scaling), RMSNorm, SwiGLU, tied or untied embeddings. Follows the Hugging
// Face reference modelling code's conventions (rotate-half RoPE on HF-layout
// q/k weights, RMSNorm in float32, softmax in float32).
#include "qforge_host/model/model.hpp"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>

#include "qforge_host/base/errors.hpp"
#include "qforge_host/io/safetensors.hpp"

namespace qforge::host {
namespace {

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean({-1}, true) + eps);
  return weight * normed.to(x.scalar_type());
}

at::Tensor rotate_half(const at::Tensor& x) {
  int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos, sin: [T, head_dim] for positions start .. start+T-1.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& inv_freq, int64_t start, int64_t T,
                                              at::ScalarType dtype) {
  at::Tensor pos = at::arange(start, start + T, at::kFloat);
  at::Tensor freqs = at::outer(pos, inv_freq);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

void check_shape(const at::Tensor& t, at::IntArrayRef want, const std::string& name) {
  if (t.sizes() != want)
    throw UsageError(fmt::format("tensor {} has shape [{}], the config implies [{}]", name,
                                 fmt::join(t.sizes(), ", "), fmt::join(want, ", ")));
}

}  // namespace

// A batch of sequences [B, T, in] is multiplied one sequence at a time: BLAS
// GEMMs (OpenBLAS's AVX2 kernels, and its AVX-512 ones for some shapes) give
// a row results that depend on how many rows are multiplied with it, so a
// [5·T, in] product is not bit-identical to five [T, in] ones. Per sequence,
// every product has the same shape whatever the batch, so the calibration
// activations (and the Hessians and codes built from them) do not depend on
// --chunk.
at::Tensor Linear::forward(const at::Tensor& x) const {
  at::Tensor y;
  c10::optional<at::Tensor> b = bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt;
  if (packed) {
    y = packed->forward(x).to(x.scalar_type());
  } else if (x.dim() != 3 || at::GradMode::is_enabled()) {
    y = at::linear(x, weight, b);  // out= variants are not differentiable
  } else {
    y = at::empty({x.size(0), x.size(1), weight.size(0)}, x.options());
    for (int64_t s = 0; s < x.size(0); ++s) {
      at::Tensor ys = y[s];
      at::linear_out(ys, x[s], weight, b);
    }
  }
  if (adapter) y = y + adapter->forward(x).to(y.scalar_type());
  return y;
}

std::vector<Linear*> Block::linears() {
  return {&q_proj, &k_proj, &v_proj, &o_proj, &gate_proj, &up_proj, &down_proj};
}

std::vector<const Linear*> Block::linears() const {
  return {&q_proj, &k_proj, &v_proj, &o_proj, &gate_proj, &up_proj, &down_proj};
}

Linear* Block::find(const std::string& suffix) {
  for (Linear* l : linears())
    if (l->name.size() >= suffix.size() &&
        l->name.compare(l->name.size() - suffix.size(), suffix.size(), suffix) == 0)
      return l;
  return nullptr;
}

at::Tensor* Block::parameter(const std::string& prefix, const std::string& name) {
  if (name.compare(0, prefix.size(), prefix) != 0) return nullptr;
  const std::string suffix = name.substr(prefix.size());
  if (suffix == "input_layernorm.weight") return &input_norm;
  if (suffix == "post_attention_layernorm.weight") return &post_attention_norm;
  if (q_norm.defined() && suffix == "self_attn.q_norm.weight") return &q_norm;
  if (k_norm.defined() && suffix == "self_attn.k_norm.weight") return &k_norm;
  for (Linear* l : linears()) {
    if (name == l->name + ".weight" && !l->packed) return &l->weight;
    if (name == l->name + ".bias" && l->bias.defined()) return &l->bias;
  }
  return nullptr;
}

Model::Model(ModelConfig config, at::ScalarType dtype) : config_(std::move(config)), dtype_(dtype) {
  inv_freq_ = rope_inv_freq();
}

// inv_freq_i = theta^(-2i/d), with the configured scaling applied.
at::Tensor Model::rope_inv_freq() const {
  const auto& c = config_;
  int64_t half = c.head_dim / 2;
  std::vector<float> f(half);
  const auto& s = c.rope_scaling;
  for (int64_t i = 0; i < half; ++i) {
    double inv = 1.0 / std::pow(c.rope_theta, 2.0 * i / static_cast<double>(c.head_dim));
    if (s.type == "linear") {
      inv /= s.factor;
    } else if (s.type == "llama3") {
      // Llama 3.1 frequency-dependent scaling: keep high frequencies, divide low
      // ones by `factor`, interpolate smoothly in between.
      double wavelen = 2 * M_PI / inv;
      double old = static_cast<double>(s.original_max_position_embeddings);
      double low_wavelen = old / s.low_freq_factor, high_wavelen = old / s.high_freq_factor;
      if (wavelen > low_wavelen) {
        inv /= s.factor;
      } else if (wavelen >= high_wavelen) {
        double smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv = (1 - smooth) * inv / s.factor + smooth * inv;
      }
    }
    f[i] = static_cast<float>(inv);
  }
  return at::tensor(f, at::kFloat);
}

namespace {

at::Tensor load_checked(const TensorStore& store, const std::string& name,
                        std::vector<int64_t> shape, at::ScalarType dtype) {
  at::Tensor t = store.load(name, dtype);
  check_shape(t, shape, name);
  return t;
}

// `name` is in the checkpoint with `shape` (ModelFileError otherwise); no data is read.
void check_present(const TensorStore& store, const std::string& name,
                   const std::vector<int64_t>& shape) {
  if (!store.contains(name))
    throw ModelFileError(fmt::format("{}: the model has no tensor named '{}'", store.dir(), name));
  if (store.info(name).shape != shape)
    throw ModelFileError(fmt::format("{}: tensor '{}' has shape [{}], the config implies [{}]",
                                     store.dir(), name, fmt::join(store.info(name).shape, ", "),
                                     fmt::join(shape, ", ")));
}

// Blocks the config does not know would be dropped without a word.
void check_no_extra_blocks(const TensorStore& store, const ModelConfig& c) {
  for (const auto& name : store.names())
    if (auto b = c.arch.layout->block_of(name); b && *b >= c.num_layers)
      throw ModelFileError(fmt::format("{}: tensor '{}' belongs to block {}, but config.json says "
                                       "num_hidden_layers is {}", store.dir(), name, *b,
                                       c.num_layers));
}

Linear load_linear(const TensorStore& store, const std::string& name, int64_t out, int64_t in,
                   bool bias, at::ScalarType dtype, const LinearLoader& loader = {}) {
  Linear l;
  l.name = name;
  if (loader && loader(store, l, out, in, bias)) return l;
  l.weight = load_checked(store, name + ".weight", {out, in}, dtype);
  if (bias) l.bias = load_checked(store, name + ".bias", {out}, dtype);
  return l;
}

}  // namespace

Model Model::open(const std::string& dir, at::ScalarType dtype, LinearLoader loader) {
  Model m(load_config(dir), dtype);
  m.store_ = std::make_shared<TensorStore>(dir);
  m.loader_ = std::move(loader);
  m.blocks_.resize(m.config_.num_layers);
  return m;
}

Model Model::load(const std::string& dir, at::ScalarType dtype, bool with_blocks,
                  LinearLoader loader) {
  Model m = open(dir, dtype, std::move(loader));
  const ModelConfig& c = m.config_;
  const TensorStore& store = *m.store_;
  const int64_t H = c.hidden_size;
  check_no_extra_blocks(store, c);
  m.embed_tokens_ = load_checked(store, "model.embed_tokens.weight", {c.vocab_size, H}, dtype);
  m.final_norm_ = load_checked(store, "model.norm.weight", {H}, dtype);
  if (c.tie_word_embeddings || !store.contains("lm_head.weight")) {
    if (!c.tie_word_embeddings)
      throw UsageError(fmt::format("{}: no lm_head.weight and tie_word_embeddings is false", dir));
    m.lm_head_.name = "lm_head";
    m.lm_head_.weight = m.embed_tokens_;
  } else {
    m.lm_head_ = load_linear(store, "lm_head", c.vocab_size, H, false, dtype, m.loader_);
  }
  if (with_blocks)
    for (int64_t i = 0; i < c.num_layers; ++i) m.load_block(i);
  return m;
}

void Model::load_block(size_t i) { blocks_.at(i) = read_block(i, /*check_only=*/false); }

void Model::check_blocks() const {
  if (!store_) throw UsageError("check_blocks: this model was not loaded from a checkpoint");
  const ModelConfig& c = config_;
  const TensorStore& store = *store_;
  // What eval checks when it loads the model, without reading the weights.
  check_present(store, "model.embed_tokens.weight", {c.vocab_size, c.hidden_size});
  check_present(store, "model.norm.weight", {c.hidden_size});
  if (!c.tie_word_embeddings) {
    if (!store.contains("lm_head.weight") && !loader_)
      throw ModelFileError(fmt::format("{}: no lm_head.weight and tie_word_embeddings is false",
                                       store.dir()));
  }
  for (size_t i = 0; i < blocks_.size(); ++i) read_block(i, /*check_only=*/true);
  check_no_extra_blocks(store, c);
  // Tensors copied through unchanged (embedding, norms, lm_head) must be
  // finite: checked a slice at a time on the mapped data.
  for (const auto& name : store.names()) {
    if (name.find("norm") == std::string::npos && name != "model.embed_tokens.weight" &&
        name != "lm_head.weight")
      continue;
    if (!all_finite(store.view(name)))
      throw ModelFileError(fmt::format("{}: tensor '{}' holds non-finite values", store.dir(), name));
  }
}

std::string Model::first_non_finite_tensor() const {
  if (!store_) return {};
  for (const auto& name : store_->names())
    if (!all_finite(store_->view(name))) return name;
  return {};
}

bool all_finite(const at::Tensor& t) {
  if (!at::isFloatingType(t.scalar_type())) return true;
  if (t.dim() == 0) return at::isfinite(t).item<bool>();
  const int64_t rows = t.size(0), per_row = std::max<int64_t>(1, t.numel() / std::max<int64_t>(rows, 1));
  const int64_t step = std::max<int64_t>(1, (int64_t{1} << 20) / per_row);
  for (int64_t r = 0; r < rows; r += step)
    if (!at::isfinite(t.narrow(0, r, std::min(step, rows - r))).all().item<bool>()) return false;
  return true;
}

// Block i from the store; with check_only, every tensor is looked up and its
// shape checked against the config without reading any data.
Block Model::read_block(size_t i, bool check_only) const {
  if (!store_) throw UsageError("load_block: this model was not loaded from a checkpoint");
  const ModelConfig& c = config_;
  const TensorStore& store = *store_;
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size;
  const at::ScalarType dt = dtype_;
  const LinearLoader none;
  const LinearLoader& loader = check_only ? none : loader_;
  auto tensor = [&](const std::string& name, std::vector<int64_t> shape) {
    if (!check_only) return load_checked(store, name, shape, dt);
    check_present(store, name, shape);
    return at::Tensor();
  };
  auto linear = [&](const std::string& name, int64_t out, int64_t in, bool bias) {
    Linear l;
    l.name = name;
    if (loader && loader(store, l, out, in, bias)) return l;
    l.weight = tensor(name + ".weight", {out, in});
    if (bias) l.bias = tensor(name + ".bias", {out});
    return l;
  };
  std::string p = c.arch.layout->prefix(static_cast<int64_t>(i));
  Block b;
  b.input_norm = tensor(p + "input_layernorm.weight", {H});
  b.post_attention_norm = tensor(p + "post_attention_layernorm.weight", {H});
  b.q_proj = linear(p + "self_attn.q_proj", c.num_heads * D, H, c.attention_bias);
  b.k_proj = linear(p + "self_attn.k_proj", c.num_kv_heads * D, H, c.attention_bias);
  b.v_proj = linear(p + "self_attn.v_proj", c.num_kv_heads * D, H, c.attention_bias);
  // Qwen2 has biases on q/k/v only; Llama's attention_bias covers o_proj too.
  b.o_proj = linear(p + "self_attn.o_proj", H, c.num_heads * D,
                    c.attention_bias && !c.arch.qkv_bias_always);
  if (c.arch.qk_norm) {
    b.q_norm = tensor(p + "self_attn.q_norm.weight", {D});
    b.k_norm = tensor(p + "self_attn.k_norm.weight", {D});
  }
  b.gate_proj = linear(p + "mlp.gate_proj", I, H, c.mlp_bias);
  b.up_proj = linear(p + "mlp.up_proj", I, H, c.mlp_bias);
  b.down_proj = linear(p + "mlp.down_proj", H, I, c.mlp_bias);
  return b;
}

void Model::release_block(size_t i) { blocks_.at(i) = Block{}; }

KVCache Model::new_cache(int64_t batch, int64_t capacity) const {
  KVCache cache;
  cache.capacity = capacity;
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    cache.k.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, dtype_));
    cache.v.push_back(at::empty({batch, config_.num_kv_heads, capacity, config_.head_dim}, dtype_));
  }
  return cache;
}

at::Tensor Model::embed(const at::Tensor& ids) const {
  if (ids.numel() > 0) {
    int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size)
      throw UsageError(fmt::format("token id {} is outside the vocabulary [0, {})",
                                   lo < 0 ? lo : hi, config_.vocab_size));
  }
  return at::embedding(embed_tokens_, ids);
}

namespace {
struct StopForward {};  // a LinearTap asked to stop; never leaves block_forward
}  // namespace

at::Tensor Model::block_forward(size_t layer, const at::Tensor& h, int64_t start,
                                KVCache* cache, const LinearTap* tap) const {
  auto run = [tap](const Linear& l, const at::Tensor& x) {
    if (tap != nullptr && !(*tap)(l, x)) throw StopForward{};
    return l.forward(x);
  };
  try {
    return block_forward_impl(layer, h, start, cache, run);
  } catch (const StopForward&) {
    return at::Tensor();
  }
}

template <class Run>
at::Tensor Model::block_forward_impl(size_t layer, const at::Tensor& h, int64_t start,
                                     KVCache* cache, const Run& run) const {
  const ModelConfig& c = config_;
  const Block& b = blocks_.at(layer);
  if (!b.input_norm.defined())
    throw UsageError(fmt::format("block {} is not loaded", layer));
  const int64_t B = h.size(0), T = h.size(1), D = c.head_dim;
  const int64_t n_rep = c.num_heads / c.num_kv_heads;

  at::Tensor x = rms_norm(h, b.input_norm, c.rms_norm_eps);
  at::Tensor q = run(b.q_proj, x).view({B, T, c.num_heads, D});
  at::Tensor k = run(b.k_proj, x).view({B, T, c.num_kv_heads, D});
  at::Tensor v = run(b.v_proj, x).view({B, T, c.num_kv_heads, D});
  if (c.arch.qk_norm) {
    q = rms_norm(q, b.q_norm, c.rms_norm_eps);
    k = rms_norm(k, b.k_norm, c.rms_norm_eps);
  }
  q = q.transpose(1, 2);
  k = k.transpose(1, 2);
  v = v.transpose(1, 2);
  auto [cos, sin] = rope_tables(inv_freq_, start, T, q.scalar_type());
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;

  int64_t total = start + T;
  if (cache != nullptr) {
    if (total > cache->capacity)
      throw UsageError(fmt::format("KV cache holds {} positions, {} needed", cache->capacity, total));
    cache->k[layer].narrow(2, start, T).copy_(k);
    cache->v[layer].narrow(2, start, T).copy_(v);
    k = cache->k[layer].narrow(2, 0, total);
    v = cache->v[layer].narrow(2, 0, total);
  } else if (start != 0) {
    throw UsageError("block_forward: a start position needs a KV cache");
  }
  // Grouped-query attention without copying K/V: the n_rep query heads that
  // share a KV head become n_rep*T rows of one batched matmul.
  at::Tensor q3 = q.reshape({B, c.num_kv_heads, n_rep * T, D});
  at::Tensor k3 = k.reshape({B, c.num_kv_heads, total, D});
  at::Tensor v3 = v.reshape({B, c.num_kv_heads, total, D});
  // Query t (position start+t) sees key s when s <= start+t (and, with a
  // sliding window, s > start+t-window): an additive 0/-inf mask, fused into
  // the scaled QKᵀ product.
  at::Tensor qpos = at::arange(start, total, at::kLong).unsqueeze(1);
  at::Tensor kpos = at::arange(0, total, at::kLong).unsqueeze(0);
  at::Tensor hidden = kpos > qpos;
  if (c.sliding_window > 0) hidden = hidden.logical_or(kpos <= qpos - c.sliding_window);
  at::Tensor mask = at::zeros({T, total}, q.options())
                        .masked_fill_(hidden, -std::numeric_limits<float>::infinity())
                        .repeat({n_rep, 1});
  // One sequence at a time: the scores of a batch ([B, heads, T, total]) are
  // the largest tensors of a forward pass; per sequence they are B times
  // smaller, reused from the heap instead of fresh pages each time, and every
  // product has the same shape whatever the batch (as in Linear::forward).
  // Under autograd the per-sequence results are stacked instead (out= ops
  // are not differentiable).
  const bool grad = at::GradMode::is_enabled();
  at::Tensor attn = grad ? at::Tensor() : at::empty({B, c.num_kv_heads, n_rep * T, D}, q.options());
  std::vector<at::Tensor> outs;
  for (int64_t s = 0; s < B; ++s) {
    at::Tensor scores =
        at::baddbmm(mask, q3[s], k3[s].transpose(1, 2), 1.0, 1.0 / std::sqrt(double(D)));
    at::Tensor probs = at::softmax(scores.to(at::kFloat), -1).to(q.scalar_type());
    if (grad) {
      outs.push_back(at::bmm(probs, v3[s]));
    } else {
      at::Tensor out_s = attn[s];
      at::bmm_out(out_s, probs, v3[s]);
    }
  }
  if (grad) attn = at::stack(outs);
  attn = attn.view({B, c.num_heads, T, D}).transpose(1, 2).reshape({B, T, c.num_heads * D});
  at::Tensor out = h + run(b.o_proj, attn);

  x = rms_norm(out, b.post_attention_norm, c.rms_norm_eps);
  at::Tensor mlp = run(b.down_proj, at::silu(run(b.gate_proj, x)) * run(b.up_proj, x));
  return out + mlp;
}

at::Tensor Model::head(const at::Tensor& h) const {
  return lm_head_.forward(rms_norm(h, final_norm_, config_.rms_norm_eps)).to(at::kFloat);
}

at::Tensor Model::forward(const at::Tensor& ids, KVCache* cache) const {
  if (ids.dim() != 2) throw UsageError("forward: ids must be [batch, T]");
  int64_t start = cache ? cache->length : 0;
  at::Tensor h = embed(ids);
  for (size_t i = 0; i < blocks_.size(); ++i) h = block_forward(i, h, start, cache);
  if (cache) cache->length = start + ids.size(1);
  return head(h);
}

int64_t Model::parameter_count() const {
  int64_t n = embed_tokens_.numel() + final_norm_.numel();
  if (!config_.tie_word_embeddings && lm_head_.weight.defined()) n += lm_head_.weight.numel();
  for (const auto& b : blocks_) {
    n += b.input_norm.numel() + b.post_attention_norm.numel();
    if (b.q_norm.defined()) n += b.q_norm.numel() + b.k_norm.numel();
    for (const Linear* l : b.linears()) {
      if (l->weight.defined()) n += l->weight.numel();
      if (l->bias.defined()) n += l->bias.numel();
    }
  }
  return n;
}

}  // namespace qforge::host
