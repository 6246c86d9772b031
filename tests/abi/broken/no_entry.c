/* Broken on purpose: a shared library that is not a qforge plugin at all. It
 * exports a function, but not qforge_plugin_entry_v1. The host must refuse it
 * from the dynamic symbol table without running anything in it. */
#include <qforge/version.h>

QFORGE_EXPORT int qforge_test_not_a_plugin(void);
QFORGE_EXPORT int qforge_test_not_a_plugin(void) { return 42; }
