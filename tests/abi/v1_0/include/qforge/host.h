/* Host services handed to plugins (DESIGN.md rule 6).
 *
 * A plugin never links against the host: every service it may use is a
 * function pointer in qforge_host, which the host passes to the entry's
 * `init` and to every component call. The pointer stays valid until the
 * entry's `deinit` returns.
 *
 * Threads: every function in qforge_host may be called from any thread,
 * concurrently. */
#ifndef QFORGE_HOST_H
#define QFORGE_HOST_H

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Log levels, carried as int32_t. */
enum {
  QFORGE_LOG_TRACE = 0,
  QFORGE_LOG_DEBUG = 1,
  QFORGE_LOG_INFO = 2,
  QFORGE_LOG_WARN = 3,
  QFORGE_LOG_ERROR = 4
};

typedef struct qforge_host {
  uint32_t struct_size;  /* sizeof(qforge_host) as compiled by the host */
  uint32_t abi_major;    /* QFORGE_ABI_MAJOR of the host */
  uint32_t abi_minor;    /* QFORGE_ABI_MINOR of the host */
  uint32_t reserved;     /* 0 */
  const char* name;      /* e.g. "qforge" */
  const char* version;   /* e.g. "0.1.0" */
  void* host_data;       /* private to the host */

  /* Writes one log line; `message` is UTF-8 without a trailing newline. */
  void (*log)(const struct qforge_host* host, int32_t level, const char* message);

  /* Makes a status object (never returns NULL, even out of memory).
   * `code` is a QFORGE_STATUS_* other than OK; `message` is copied. */
  qforge_status* (*status_create)(const struct qforge_host* host, int32_t code,
                                  const char* message);
  /* Reads and releases statuses returned by host services (post-processes). */
  int32_t (*status_code)(const struct qforge_host* host, const qforge_status* status);
  const char* (*status_message)(const struct qforge_host* host, const qforge_status* status);
  void (*status_destroy)(const struct qforge_host* host, qforge_status* status);

  /* Reports progress of long work: `done` of `total` units of `task`
   * (e.g. "gptq columns"). total = 0 means unknown. Cheap; call it freely. */
  void (*progress)(const struct qforge_host* host, const char* task, uint64_t done,
                   uint64_t total);

  /* Non-zero once the user asked to stop (Ctrl-C). Long loops should poll it
   * and return a QFORGE_STATUS_CANCELLED status. */
  qforge_bool (*is_cancelled)(const struct qforge_host* host);

  /* Aligned allocation accounted by the host; `alignment` is a power of two.
   * Returns NULL on failure. Free with `free` of the same host. */
  void* (*alloc)(const struct qforge_host* host, uint64_t size, uint64_t alignment);
  void (*free)(const struct qforge_host* host, void* pointer);

  /* Optional host features by id and revision (DESIGN.md rule 10), e.g.
   * "qforge.host.train", 1. Returns the extension's table, or NULL when the
   * host does not offer that id at a revision >= `revision`. */
  const void* (*get_extension)(const struct qforge_host* host, const char* id,
                               uint32_t revision);
} qforge_host;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_HOST_H */
