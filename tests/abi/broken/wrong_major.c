/* Broken on purpose: built against a future ABI major (2). The host must refuse
 * it before reading anything but the version fields of the entry. */
#include "copy_quantizer.h"

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.wrong-major", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-wrong-major", 2 /* defect */, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
