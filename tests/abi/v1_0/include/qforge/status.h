/* Status objects: how fallible calls report errors (DESIGN.md rule 5).
 *
 * A fallible function returns `qforge_status*`: NULL means success. A non-NULL
 * status is created by the host (qforge_host.status_create) and carries a code
 * and a UTF-8 message. Whoever receives a non-NULL status owns it and releases
 * it with qforge_host.status_destroy; the host does that for statuses returned
 * by plugin functions. No exception and no C++ type crosses the ABI. */
#ifndef QFORGE_STATUS_H
#define QFORGE_STATUS_H

#include "version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Opaque; only the host knows its layout. */
typedef struct qforge_status qforge_status;

/* Status codes, carried as int32_t. New codes may be appended in a minor;
 * an unknown code must be treated like QFORGE_STATUS_INTERNAL. */
enum {
  QFORGE_STATUS_OK = 0,               /* never carried by a status object */
  QFORGE_STATUS_INVALID_ARGUMENT = 1, /* the caller's input is wrong */
  QFORGE_STATUS_UNSUPPORTED = 2,      /* valid, but this component can't do it */
  QFORGE_STATUS_OUT_OF_MEMORY = 3,
  QFORGE_STATUS_CANCELLED = 4,        /* qforge_host.is_cancelled said stop */
  QFORGE_STATUS_IO = 5,               /* a file could not be read or written */
  QFORGE_STATUS_INTERNAL = 6          /* a bug, or an exception caught at the edge */
};

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_STATUS_H */
