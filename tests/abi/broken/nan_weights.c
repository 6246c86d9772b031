/* Broken on purpose: a working copy quantizer whose dequantized weight holds
 * a NaN (copy_quantizer.c built with QF_TEST_COPY_NAN). The pipeline must
 * refuse the result with the layer named, before any shard is written. */
#include "copy_quantizer.h"

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.nan-weights", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-nan-weights", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
