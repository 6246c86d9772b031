// How the process allocates memory.
#pragma once

namespace qforge::host {

// A forward pass allocates and frees tensors of a few MiB for every layer
// (per-sequence attention scores, activations, logits). glibc's defaults
// serve the large ones from fresh mmaps or hand the heap's top back to the
// kernel after every free, and the kernel zero-fills each page again on first
// touch: a stories260K perplexity pass took 2.0 M page faults and more
// system than user time. This keeps allocations up to 32 MiB in the heap (the
// largest threshold glibc's own adaptive rule would reach) and up to 128 MiB
// free at its top; larger tensors (weights of big layers) still get their own
// mapping and go back to the system when freed, and the pipeline trims the
// heaps after each block.
void keep_large_allocations_in_heap();

}  // namespace qforge::host
