/* Broken on purpose: a pre-process (a kind of ABI 1.2) that declares
 * min_host_minor 1, so that a 1.1 host would meet a kind it does not know
 * instead of a clear minor refusal. The registry refuses it. */
#include "copy_quantizer.h"

static qforge_status* run_block(const qforge_host* host, const qforge_model_services* model,
                                uint32_t block, const qforge_param_value* const* params,
                                uint32_t param_count) {
  (void)host, (void)model, (void)block, (void)params, (void)param_count;
  return NULL;
}

static const qforge_preprocess table = {sizeof(qforge_preprocess), 0, &run_block};

static const qforge_component_desc component = {
    .struct_size = sizeof(qforge_component_desc),
    .kind = QFORGE_COMPONENT_PREPROCESS,
    .min_host_minor = 1 /* defect: a pre-process needs 2 */,
    .id = "org.qforge.test.preprocess-minor",
    .name = "No-op pre-process (test)",
    .version = "1.0.0",
    .vendor = "qforge tests",
    .license = "MIT",
    .description = "Does nothing; a deliberately broken test plugin.",
    .vtable = &table};
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-preprocess-minor", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
