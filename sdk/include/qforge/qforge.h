/* qforge plugin SDK, C ABI v1: the umbrella header.
 *
 * One small header per concern, like CLAP's include/clap/:
 *   version.h          ABI version numbers, export macros
 *   dlpack.h           DLPack 0.6 tensors (the only way tensors cross)
 *   status.h           status objects and codes
 *   params.h           typed parameter schema and values
 *   host.h             services the host hands to plugins
 *   component.h        component descriptors
 *   quantizer.h        quantizer components
 *   inference_layer.h  inference-layer components
 *   postprocess.h      post-process components
 *   entry.h            the exported entry point
 *
 * Every header compiles as C99 and C++. Struct layouts are pinned by
 * tests/abi/layout_test.c. Optional C++ helpers: qforge/cpp/plugin.hpp.
 * Packed formats, included on their own where needed: qforge/formats/<name>.h
 * (one per format: id, tensors, metadata keys, decoding). */
#ifndef QFORGE_QFORGE_H
#define QFORGE_QFORGE_H

#include "version.h"
#include "dlpack.h"
#include "status.h"
#include "params.h"
#include "host.h"
#include "component.h"
#include "quantizer.h"
#include "inference_layer.h"
#include "postprocess.h"
#include "preprocess.h"
#include "entry.h"

#endif /* QFORGE_QFORGE_H */
