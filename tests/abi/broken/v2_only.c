/* Broken on purpose (for this host): a plugin of a future ABI major that, as
 * DESIGN.md rule 1 asks, exports only qforge_plugin_entry_v2. A v1 host must
 * refuse it by name, without loading it, and say which major it speaks. */
#include <qforge/version.h>

QFORGE_EXPORT const void* qforge_plugin_entry_v2(void);
const void* qforge_plugin_entry_v2(void) { return 0; }
