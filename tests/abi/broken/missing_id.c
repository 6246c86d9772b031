/* Broken on purpose: its only component has no id (NULL). */
#include "copy_quantizer.h"

static const qforge_component_desc component = QF_TEST_COMPONENT(NULL /* defect */, 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-missing-id", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
