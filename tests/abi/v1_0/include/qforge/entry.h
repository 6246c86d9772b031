/* The plugin entry point (DESIGN.md rules 1, 2 and 9).
 *
 * A plugin library exports exactly one C symbol per ABI major:
 *
 *     QFORGE_EXTERN_C QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
 *
 * It returns a pointer to static data and has no side effects. The host looks
 * the symbol up in the file's dynamic symbol table before loading it, loads the
 * library with local symbol binding, checks `abi_major`, then calls `init`
 * once, enumerates the components, and calls `deinit` once at shutdown. */
#ifndef QFORGE_ENTRY_H
#define QFORGE_ENTRY_H

#include "component.h"
#include "host.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QFORGE_ENTRY_SYMBOL_V1 "qforge_plugin_entry_v1"

typedef struct qforge_plugin_entry {
  uint32_t struct_size;   /* sizeof(qforge_plugin_entry) as compiled by the plugin */
  uint32_t abi_major;     /* QFORGE_ABI_MAJOR the plugin was built against; must match */
  uint32_t abi_minor;     /* QFORGE_ABI_MINOR the plugin was built against */
  uint32_t reserved;      /* 0 */
  const char* name;       /* the library's name, e.g. "qforge-rtn" */
  const char* version;    /* the library's version, e.g. "1.0.0" */

  /* Called once, on the main thread, before any other function but this
   * table's fields. May be NULL. A non-NULL status refuses the whole plugin;
   * `deinit` is then not called. `host` stays valid until `deinit` returns. */
  qforge_status* (*init)(const qforge_host* host);
  /* Called once at shutdown after a successful `init`, when nothing the
   * plugin made is alive. May be NULL. Main thread. */
  void (*deinit)(void);
  /* The components, after `init`. Any thread. */
  uint32_t (*component_count)(void);
  const qforge_component_desc* (*get_component)(uint32_t index);
} qforge_plugin_entry;

typedef const qforge_plugin_entry* (*qforge_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_ENTRY_H */
