/* qforge plugin ABI: version numbers and export macros.
 *
 * Versioning (DESIGN.md rule 2): the ABI major must match exactly; a minor only
 * appends (new fields at the end of structs, new functions at the end of tables,
 * new extensions). A host of minor M accepts plugins built against any minor,
 * and refuses a component that declares it needs a host minor greater than M.
 *
 * Minors: 1.0 the first; 1.1 qforge_model_services.block_count/layer_info and
 * the host extension "qforge.host.train" (qforge/ext/train.h); 1.2 the
 * pre-process component kind (qforge/preprocess.h), model services
 * input_source/input_stats, qforge_quantize_input.act_absmax (feature
 * "needs-act-absmax") and the quantizer extension "qforge.quantizer.schemes"
 * (qforge/ext/schemes.h); 1.3 model services input_gram (AWQ's output error). */
#ifndef QFORGE_VERSION_H
#define QFORGE_VERSION_H

#include <stdint.h>

#define QFORGE_ABI_MAJOR 1
#define QFORGE_ABI_MINOR 3

#if defined(_WIN32)
#define QFORGE_EXPORT __declspec(dllexport)
#else
#define QFORGE_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
#define QFORGE_EXTERN_C extern "C"
#else
#define QFORGE_EXTERN_C
#endif

/* Booleans cross the ABI as int32_t: 0 is false, anything else is true. */
typedef int32_t qforge_bool;

#endif /* QFORGE_VERSION_H */
