// qforge-sparsegpt: what the plugin's translation units share.
#pragma once

#include <qforge/cpp/layer_input.hpp>
#include <qforge/cpp/plugin.hpp>

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace qforge::sparsegpt {

// A sparsity pattern: N:M (n of every m consecutive inputs are 0) or
// unstructured (m == 0). The values of "sparsity_structure"
// (qforge/formats/pruned_v1.h).
struct Structure {
  int n = 0, m = 0;
  bool unstructured() const { return m == 0; }
  std::string text() const;  // "2:4", "unstructured"
};

// "N:M" (0 < N < M <= 64) or "unstructured"; INVALID_ARGUMENT naming `what`
// otherwise.
Structure parse_structure(const std::string& text, const std::string& what);

// The first group of M along a row of w [out, in] (float32, contiguous) that
// holds fewer than N zeros, as "row r, inputs [j, j + M) hold k zeros"; ""
// when every group holds at least N (or the structure is unstructured).
std::string n_of_m_violation(const at::Tensor& w, const Structure& s);

// Writes org.qforge.pruned/1: `pruned` [out, in] float32 as the weight, the
// layer's bias, the metadata (its zero fraction measured), the dequantized
// weight and the error figures.
void write_pruned(const QuantizeOutput& out, const LayerInput& in, const at::Tensor& pruned,
                  const Structure& s);

// org.qforge.sparsegpt and org.qforge.magnitude (sparsegpt.cpp).
void describe_quantizers(Plugin& plugin);
// org.qforge.pruned.layer (layer.cpp).
void describe_layer(Plugin& plugin);

}  // namespace qforge::sparsegpt
