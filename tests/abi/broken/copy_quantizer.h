/* Shared pieces of the deliberately broken test plugins, so that each of them
 * is a complete, working plugin except for exactly one intended defect.
 *
 * qf_test_copy_quantizer is a trivial but real quantizer: it "quantizes" by
 * copying, writes format "org.qforge.test.copy/1" with metadata "{}", one
 * packed tensor "weight" (float32 [out, in]) and the same values as the
 * dequantized weight. Each tensor is one host->alloc block whose deleter frees
 * it with host->free of the host that made it. */
#ifndef QFORGE_TEST_COPY_QUANTIZER_H
#define QFORGE_TEST_COPY_QUANTIZER_H

#include <qforge/qforge.h>

#define QF_TEST_COPY_FORMAT "org.qforge.test.copy/1"

/* Hidden (the plugins are built with hidden visibility). */
extern const qforge_quantizer qf_test_copy_quantizer;

/* A quantizer component using qf_test_copy_quantizer. */
#define QF_TEST_COMPONENT(ID, MIN_HOST_MINOR, PARAMS, PARAM_COUNT)              \
  {                                                                             \
    .struct_size = sizeof(qforge_component_desc),                               \
    .kind = QFORGE_COMPONENT_QUANTIZER,                                         \
    .min_host_minor = (MIN_HOST_MINOR),                                         \
    .reserved = 0,                                                              \
    .id = (ID),                                                                 \
    .name = "Copy (test)",                                                      \
    .version = "1.0.0",                                                         \
    .vendor = "qforge tests",                                                   \
    .license = "MIT",                                                           \
    .description = "Copies the weight; a deliberately broken test plugin.",     \
    .features = NULL,                                                           \
    .params = (PARAMS),                                                         \
    .param_count = (PARAM_COUNT),                                               \
    .reserved2 = 0,                                                             \
    .vtable = &qf_test_copy_quantizer,                                          \
    .get_extension = NULL                                                       \
  }

/* A v1 entry table with the given name, ABI major, size, init and the
 * component_count / get_component functions of QF_TEST_SINGLE_COMPONENT. */
#define QF_TEST_ENTRY(NAME, ABI_MAJOR, STRUCT_SIZE, INIT) \
  {                                                      \
    .struct_size = (STRUCT_SIZE),                        \
    .abi_major = (ABI_MAJOR),                            \
    .abi_minor = QFORGE_ABI_MINOR,                       \
    .reserved = 0,                                       \
    .name = (NAME),                                      \
    .version = "1.0.0",                                  \
    .init = (INIT),                                      \
    .deinit = NULL,                                      \
    .component_count = &qf_test_component_count,         \
    .get_component = &qf_test_get_component              \
  }

/* Defines qf_test_component_count() == 1 and qf_test_get_component(0) ==
 * &COMPONENT for a plugin with a single component. */
#define QF_TEST_SINGLE_COMPONENT(COMPONENT)                                   \
  static uint32_t qf_test_component_count(void) { return 1; }                 \
  static const qforge_component_desc* qf_test_get_component(uint32_t index) { \
    return index == 0 ? &(COMPONENT) : NULL;                                  \
  }

#endif /* QFORGE_TEST_COPY_QUANTIZER_H */
