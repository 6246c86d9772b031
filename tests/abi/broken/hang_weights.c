/* Broken on purpose: a copy quantizer that never returns and never polls
 * is_cancelled (copy_quantizer.c built with QF_TEST_COPY_HANG). Ctrl-C must
 * still stop qforge, after the host's grace period, with exit 130. */
#include "copy_quantizer.h"

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.hang-weights", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-hang-weights", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
