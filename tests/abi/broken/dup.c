/* Broken on purpose when two copies sit side by side: built twice, as dup_a
 * and dup_b (QF_TEST_DUP_NAME), both declaring the component id
 * "org.qforge.test.dup". The first loaded wins; the second is refused with a
 * reason naming the first library. */
#include "copy_quantizer.h"

#ifndef QF_TEST_DUP_NAME
#error "define QF_TEST_DUP_NAME"
#endif

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.dup" /* defect: not unique */, 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY(QF_TEST_DUP_NAME, QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
