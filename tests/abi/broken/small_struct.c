/* Broken on purpose: the entry's struct_size says the table ends before
 * component_count, i.e. it is smaller than any v1 table. The host must not
 * read the fields past struct_size and so cannot use the plugin. */
#include "copy_quantizer.h"

#include <stddef.h>

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.small-struct", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-small-struct", QFORGE_ABI_MAJOR,
                  offsetof(qforge_plugin_entry, component_count) /* defect */, NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
