// The Llama-family decoder: weights, forward pass with a KV cache.
//
// Layers are plain data (Linear, Block) so that later stages can replace a
// linear layer's weight or give it a packed inference layer.
#pragma once

#include <ATen/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qforge_host/model/config.hpp"

namespace qforge::host {

class TensorStore;

// Every value of `t` is finite (true for non-floating types), checked a slice
// of rows (about 2^20 values) at a time: no temporary the size of `t`.
bool all_finite(const at::Tensor& t);

// A linear layer whose weight is not a dense tensor the model holds: a packed
// layer run by an inference-layer plugin (plugins/abi_bridge.hpp implements
// it). The model only calls it.
class LinearKernel {
 public:
  virtual ~LinearKernel() = default;
  virtual int64_t out_features() const = 0;
  virtual int64_t in_features() const = 0;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;          // [..., in] -> [..., out]
  virtual at::Tensor backward_input(const at::Tensor& gy) const = 0;  // [..., out] -> [..., in]
  virtual at::Tensor dequantize() const = 0;                           // [out, in] float32
  virtual std::string format_id() const { return {}; }                 // e.g. "org.qforge.gptq/1"
};

// What a post-process adds to a linear layer (e.g. a LoRA adapter):
// y = base(x) + f(x). Under autograd, f is differentiated like any other op.
class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;  // [..., in] -> f(x), [..., out]
  // W += ΔW for a dense [out, in] float32 weight; false when f is not linear.
  virtual bool merge_into(at::Tensor& /*weight*/) const { return false; }
};

// y = x Wᵀ + b, or through a packed kernel when one is set; plus f(x) when an
// adapter is set. With autograd on (at::GradMode), every op is differentiable
// (training); off, products go into preallocated outputs (inference).
struct Linear {
  std::string name;            // e.g. "model.layers.0.self_attn.q_proj"
  at::Tensor weight;           // [out, in] in the compute dtype (undefined when packed)
  at::Tensor bias;             // [out] or undefined
  std::shared_ptr<LinearKernel> packed;
  std::shared_ptr<LinearAdapter> adapter;
  at::Tensor forward(const at::Tensor& x) const;
};

struct Block {
  at::Tensor input_norm, post_attention_norm;  // [hidden]
  at::Tensor q_norm, k_norm;                   // [head_dim] (Qwen3) or undefined
  Linear q_proj, k_proj, v_proj, o_proj;
  Linear gate_proj, up_proj, down_proj;
  std::vector<Linear*> linears();              // in true-sequential order
  std::vector<const Linear*> linears() const;
  // The linear whose name ends with `suffix` (e.g. "mlp.up_proj"); null when none.
  Linear* find(const std::string& suffix);
  // The tensor named `name` in this block, whose names start with `prefix`
  // ("model.layers.3."): a norm's weight, a dense linear's weight, a bias;
  // null when the block has none (a packed linear's weight included).
  at::Tensor* parameter(const std::string& prefix, const std::string& name);
};

// Keys and values of past positions, per layer: [batch, kv_heads, capacity, head_dim].
struct KVCache {
  std::vector<at::Tensor> k, v;
  int64_t length = 0;    // positions filled
  int64_t capacity = 0;
};

// Called with each linear layer's input during a block's forward pass
// (calibration), before the layer runs. Returning false stops the pass there:
// block_forward then returns an undefined tensor (the pipeline stops once it
// has the input it needs, rather than running the rest of the block).
using LinearTap = std::function<bool(const Linear&, const at::Tensor& input)>;

// Reads a linear layer the model cannot read itself (e.g. packed tensors of a
// quantized checkpoint): given the store, the layer's name and its [out, in]
// shape from the config, fills `linear` and returns true, or returns false to
// let the model read "<name>.weight" (and "<name>.bias" when `bias`).
using LinearLoader = std::function<bool(const TensorStore& store, Linear& linear, int64_t out,
                                        int64_t in, bool bias)>;

class Model {
 public:
  // Loads config.json and the weights of a Hugging Face model directory.
  // `dtype`: compute dtype (float32 default; bfloat16/float16 selectable).
  // With `with_blocks` false only the embeddings, final norm and head are
  // read; load_block() brings in one block at a time (bounded memory).
  // `loader`, when set, is asked first for every linear layer.
  static Model load(const std::string& dir, at::ScalarType dtype, bool with_blocks = true,
                    LinearLoader loader = {});
  Model(ModelConfig config, at::ScalarType dtype);

  // The config and the checkpoint, no weights yet: load_block() reads one
  // block at a time (the pipeline's bounded-memory mode).
  static Model open(const std::string& dir, at::ScalarType dtype, LinearLoader loader = {});
  const TensorStore& store() const { return *store_; }

  // Reads block `i`'s weights from the checkpoint (replacing what is there);
  // release_block() frees them.
  void load_block(size_t i);
  void release_block(size_t i);
  // The checkpoint as a whole against the config, as loading it for eval
  // would check: every block's tensors with the shapes the config implies,
  // the embedding, final norm and lm_head, no block beyond num_hidden_layers,
  // and finite values in the tensors a quantized copy carries through
  // unchanged (norms, embedding, lm_head). ModelFileError otherwise. A run
  // checks this before its first block rather than failing at block k or
  // writing a model qforge would refuse to load.
  void check_blocks() const;
  // The first floating tensor of the checkpoint holding a NaN or an Inf, or
  // "" (a slow scan: for explaining a non-finite result).
  std::string first_non_finite_tensor() const;

  const ModelConfig& config() const { return config_; }
  at::ScalarType dtype() const { return dtype_; }
  std::vector<Block>& blocks() { return blocks_; }
  const std::vector<Block>& blocks() const { return blocks_; }

  // ids [batch, T] (int64) -> logits [batch, T, vocab] float32. With a cache,
  // positions continue from cache->length and the cache grows by T.
  at::Tensor forward(const at::Tensor& ids, KVCache* cache = nullptr) const;
  KVCache new_cache(int64_t batch, int64_t capacity) const;

  // Pieces of the forward pass, for block-by-block use.
  at::Tensor embed(const at::Tensor& ids) const;  // [B,T] -> [B,T,hidden]
  at::Tensor block_forward(size_t layer, const at::Tensor& h, int64_t start_pos,
                           KVCache* cache, const LinearTap* tap = nullptr) const;
  at::Tensor head(const at::Tensor& h) const;     // final norm + lm_head -> float32 logits

  // Parameters as named in the checkpoint, e.g. for saving.
  int64_t parameter_count() const;

 private:
  Block read_block(size_t i, bool check_only) const;
  at::Tensor rope_inv_freq() const;
  template <class Run>  // Run(const Linear&, x) -> y: each linear layer's call
  at::Tensor block_forward_impl(size_t layer, const at::Tensor& h, int64_t start, KVCache* cache,
                                const Run& run) const;
  ModelConfig config_;
  at::ScalarType dtype_;
  at::Tensor embed_tokens_, final_norm_;
  Linear lm_head_;
  std::vector<Block> blocks_;
  at::Tensor inv_freq_;  // [head_dim/2] float32
  std::shared_ptr<TensorStore> store_;
  LinearLoader loader_;
};

}  // namespace qforge::host
