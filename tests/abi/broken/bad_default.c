/* Broken on purpose: an INT parameter whose default (99) is outside its own
 * range [1, 8]. */
#include "copy_quantizer.h"

static const qforge_param_desc bits = {
    sizeof(qforge_param_desc), QFORGE_PARAM_INT, "bits", "bits per weight",
    "99" /* defect: out of range */, NULL, 1.0, 8.0,
    QFORGE_PARAM_FLAG_HAS_MIN | QFORGE_PARAM_FLAG_HAS_MAX, 0};
static const qforge_param_desc* const params[] = {&bits};

static const qforge_component_desc component =
    QF_TEST_COMPONENT("org.qforge.test.bad-default", 0, params, 1);
QF_TEST_SINGLE_COMPONENT(component)

static const qforge_plugin_entry entry = QF_TEST_ENTRY(
    "qforge-test-bad-default", QFORGE_ABI_MAJOR, sizeof(qforge_plugin_entry), NULL);

QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
const qforge_plugin_entry* qforge_plugin_entry_v1(void) { return &entry; }
