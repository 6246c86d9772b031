/* Broken on purpose: its component needs a host of a newer ABI minor than the
 * one under test (min_host_minor = QFORGE_ABI_MINOR + 1). */
#include "copy_quantizer.h"

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.newer-minor", QFORGE_ABI_MINOR + 1 /* defect */, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-newer-minor", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
