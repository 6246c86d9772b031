/* Broken on purpose: an ENUM parameter without choices. */
#include "copy_quantizer.h"

static const qforge_param_desc mode = {
    sizeof(qforge_param_desc), QFORGE_PARAM_ENUM, "mode", "how to copy", "exact",
    NULL /* defect: an ENUM needs choices */, 0.0, 0.0, 0, 0};
static const qforge_param_desc* const params[] = {&mode};

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.bad-schema", 0, params, 1);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-bad-schema", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
