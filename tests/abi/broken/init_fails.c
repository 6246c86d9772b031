/* Broken on purpose: init refuses to start ("license check failed"). The host
 * must refuse the whole plugin, pass the message on, and never call deinit
 * (entry.h). qforge_test_init_fails_calls() is test instrumentation that lets
 * the test check the latter. */
#include "copy_quantizer.h"

static int g_init_calls = 0;
static int g_deinit_calls = 0;

static qforge_status* failing_init(const qforge_host* host) {
  ++g_init_calls;
  return host->status_create(host, QFORGE_STATUS_UNSUPPORTED, "license check failed");
}

static void counting_deinit(void) { ++g_deinit_calls; }

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.init-fails", 0, NULL, 0);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = {
    sizeof(qforge_plugin_entry),
    QFORGE_ABI_MAJOR,
    QFORGE_ABI_MINOR,
    0,
    "qforge-test-init-fails",
    "1.0.0",
    &failing_init, /* defect */
    &counting_deinit,
    &qf_test_component_count,
    &qf_test_get_component};

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }

QFORGE_EXPORT void qforge_test_init_fails_calls(int* init_calls, int* deinit_calls);
void qforge_test_init_fails_calls(int* init_calls, int* deinit_calls) {
  *init_calls = g_init_calls;
  *deinit_calls = g_deinit_calls;
}
