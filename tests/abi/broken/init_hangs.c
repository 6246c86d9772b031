/* Broken on purpose: init never returns (a licence server that does not
 * answer, a deadlock). The host must give up after its time limit
 * (QFORGE_PLUGIN_INIT_TIMEOUT), refuse the plugin with one line, and load
 * the others. */
#define _POSIX_C_SOURCE 200809L
#include <unistd.h>

#include "copy_quantizer.h"

static qforge_status* hanging_init(const qforge_host* host) {
  (void)host;
  for (;;) sleep(60); /* defect */
  return NULL;
}

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.init-hangs", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry =
    QF_TEST_ENTRY("qforge-test-init-hangs", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry),
                  &hanging_init);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
