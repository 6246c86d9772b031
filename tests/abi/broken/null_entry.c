/* Broken on purpose: the entry function returns NULL. */
#include "copy_quantizer.h"

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.null-entry", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

/* The table a correct plugin would return (kept so only the return is wrong). */
static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-null-entry", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) {
  return entry.struct_size == 0 ? &entry : NULL; /* defect: always NULL */
}
