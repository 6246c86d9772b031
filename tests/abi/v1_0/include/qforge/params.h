/* Typed parameter schema and parameter values (DESIGN.md rule 7).
 *
 * A component describes its parameters with an array of qforge_param_desc so
 * the host can list them (`qforge plugins show ID`), parse `--set name=value`,
 * validate ranges and choices, and fill defaults, with no plugin-specific code.
 * The host then hands the component one qforge_param_value per declared
 * parameter, in declaration order, already validated (as an array of
 * pointers, see component.h). */
#ifndef QFORGE_PARAMS_H
#define QFORGE_PARAMS_H

#include "version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Parameter types, carried as int32_t. */
enum {
  QFORGE_PARAM_BOOL = 1,        /* "true"/"false"/"1"/"0"/"yes"/"no"/"on"/"off" */
  QFORGE_PARAM_INT = 2,         /* 64-bit signed */
  QFORGE_PARAM_FLOAT = 3,       /* double */
  QFORGE_PARAM_STRING = 4,      /* UTF-8 */
  QFORGE_PARAM_ENUM = 5,        /* one of `choices` */
  QFORGE_PARAM_PATH = 6,        /* a file system path (UTF-8) */
  QFORGE_PARAM_INT_LIST = 7,    /* comma-separated ints; range applies to each */
  QFORGE_PARAM_FLOAT_LIST = 8,  /* comma-separated floats; range applies to each */
  QFORGE_PARAM_STRING_LIST = 9  /* comma-separated strings */
};

/* Flags on a parameter description. */
enum {
  QFORGE_PARAM_FLAG_HAS_MIN = 1 << 0, /* `min` is meaningful (INT, FLOAT, lists) */
  QFORGE_PARAM_FLAG_HAS_MAX = 1 << 1, /* `max` is meaningful (INT, FLOAT, lists) */
  QFORGE_PARAM_FLAG_REQUIRED = 1 << 2 /* no default; the user must set it */
};

/* One parameter's description. Static data owned by the plugin; it must stay
 * valid while the library is loaded. */
typedef struct qforge_param_desc {
  uint32_t struct_size;        /* sizeof(qforge_param_desc) as compiled by the plugin */
  int32_t type;                /* QFORGE_PARAM_* */
  const char* name;            /* [a-z0-9_]+, unique within the component */
  const char* help;            /* one line, shown by `qforge plugins show` */
  const char* default_value;   /* textual form, parsed like `--set`; NULL only when REQUIRED */
  const char* const* choices;  /* ENUM only: NULL-terminated list of allowed values */
  double min;                  /* inclusive bound, see QFORGE_PARAM_FLAG_HAS_MIN */
  double max;                  /* inclusive bound, see QFORGE_PARAM_FLAG_HAS_MAX */
  uint32_t flags;              /* QFORGE_PARAM_FLAG_* */
  uint32_t reserved;           /* 0 */
} qforge_param_desc;

/* One parameter's validated value, made by the host. Borrowed by the callee
 * for the duration of the call it is passed to. Only the fields for `type`
 * are meaningful:
 *   BOOL -> b; INT -> i; FLOAT -> f; STRING, ENUM, PATH -> s;
 *   INT_LIST -> ints[count]; FLOAT_LIST -> floats[count];
 *   STRING_LIST -> strings[count]. */
typedef struct qforge_param_value {
  uint32_t struct_size;           /* sizeof(qforge_param_value) as compiled by the host */
  int32_t type;                   /* QFORGE_PARAM_* (same as the description) */
  const char* name;               /* the parameter's name */
  qforge_bool b;
  int32_t reserved;               /* 0 */
  int64_t i;
  double f;
  const char* s;
  const int64_t* ints;
  const double* floats;
  const char* const* strings;
  uint64_t count;                 /* number of list elements */
} qforge_param_value;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_PARAMS_H */
