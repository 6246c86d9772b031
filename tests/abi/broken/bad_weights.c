/* Broken on purpose: a copy quantizer (copy_quantizer.c) whose quantize
 * misbehaves in one way chosen at build time (tests/abi/CMakeLists.txt):
 *   QF_TEST_COPY_NAN    its dequantized weight holds a NaN: refused with the
 *                       layer named, before any shard is written;
 *   QF_TEST_COPY_CRASH  SIGSEGV: the host names the component and layer;
 *   QF_TEST_COPY_EXIT   exit(0): never reported as success;
 *   QF_TEST_COPY_HANG   never returns nor polls is_cancelled: Ctrl-C still
 *                       stops qforge after its grace period.
 * QF_TEST_ID and QF_TEST_NAME name the component and the plugin. */
#include "copy_quantizer.h"

static const qforge_component_desc component = QF_TEST_COMPONENT(QF_TEST_ID, 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY(QF_TEST_NAME, QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
