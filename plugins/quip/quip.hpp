// QuIP (Chee, Cai, Kuleshov, De Sa 2023, "QuIP: 2-bit quantization of large
// language models with guarantees", arXiv 2307.13304): LDLQ rounding of a
// weight made incoherent by random orthogonal transforms, here randomized
// Hadamard transforms (qforge_kernels/hadamard.hpp) that are stored, so the
// codes decode (research/onecomp.md §4: OneComp stores neither).
#pragma once

#include <qforge/cpp/plugin.hpp>
#include <qforge_kernels/hadamard.hpp>

#include <ATen/Tensor.h>

#include <cstdint>
#include <memory>

namespace qforge::quip {

struct Settings {
  int bits = 2;
  bool per_tensor = false;   // the paper's (and OneComp's) one scale per tensor; else min/max per group
  int64_t group_size = 128;  // effective (in_features: one group per row); per-group grids only
  bool sym = false;
  bool mse = false;
  double percdamp = 0.01;
  int greedy_passes = 0;     // coordinate-descent passes after LDLQ (§5, "LDLQ-RG"-style)
  bool rescale = true;       // pre-rescaling of W and H (§4.1 step 2)
  // U. The paper transforms both sides, which a per-tensor grid needs (U
  // evens out the rows). With a grid per row and group it hurts: U spreads
  // the large rows' errors into the small ones (stories260K 3-bit g32: 9.62
  // with U, 7.12 without; q_proj and gate_proj, which feed softmax and SiLU,
  // suffer most), so the plugin sets it for per-tensor grids only.
  bool output_transform = true;
  uint64_t seed = 0;
};

// A randomized Hadamard transform with what the format stores of it.
struct Transform {
  std::shared_ptr<const kernels::RandomizedHadamard> t;  // null: none (the identity)
  bool hadamard_base = true;  // else an orthogonal base that must be stored
};

// The transform of size n: a built-in Hadamard split when there is one (n =
// 2^a · r, hadamard_split); else H_{2^a} ⊗ Q with Q a seeded random
// orthogonal matrix of the odd part r of n (modified Gram–Schmidt in double
// on seeded Gaussians: the same bits on every machine). Throws when r > 1024.
Transform make_transform(int64_t n, uint64_t seed);

struct Result {
  at::Tensor codes;          // uint8 [out, in], Q̂'s codes in the transformed space
  at::Tensor scales, zeros;  // float32 [out, groups] (float16 values; zeros may be half-integers)
  int64_t group_size = 0;    // effective
  at::Tensor rescale;        // float32 [in]
  Transform u, v;            // output (may be none) and input transforms
  at::Tensor dequantized;    // Ŵ = Uᵀ Q̂ V diag(1/rescale), float32 [out, in]
  double proxy_loss = 0;     // tr((Ŵ − W̃) H̃ (Ŵ − W̃)ᵀ) in the transformed space, relative to tr(W̃ H̃ W̃ᵀ)
  double percdamp_used = 0;
};

// W [out, in], H [in, in] (2/n XᵀX) float32.
Result quantize(const Host& host, const at::Tensor& W, const at::Tensor& H, const Settings& s);

}  // namespace qforge::quip
