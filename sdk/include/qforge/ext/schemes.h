/* Named schemes a quantizer implements: the component extension
 * "qforge.quantizer.schemes" (ABI 1.2), found with the component's
 * get_extension(QFORGE_EXT_SCHEMES, QFORGE_EXT_SCHEMES_REVISION).
 *
 * A scheme is a name users know from llm-compressor / compressed-tensors
 * presets (W4A16, W4A16_ASYM, W8A16, W8A8, FP8, FP8_DYNAMIC, ...) mapped to
 * this component's parameter values. `qforge quantize --scheme NAME` takes
 * the quantizer given with --method, or else the loaded quantizer that
 * declares NAME as its default implementation, sets the scheme's parameters
 * (the user's --set and overrides still win) and, unless --save-format is
 * given, saves as compressed-tensors. The host knows no scheme by name: the
 * list comes from the plugins (`qforge plugins show ID` prints it).
 *
 * All of it is static data owned by the plugin, valid while it is loaded. */
#ifndef QFORGE_EXT_SCHEMES_H
#define QFORGE_EXT_SCHEMES_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QFORGE_EXT_SCHEMES "qforge.quantizer.schemes"
#define QFORGE_EXT_SCHEMES_REVISION 1

typedef struct qforge_scheme_desc {
  uint32_t struct_size;        /* sizeof(qforge_scheme_desc) as compiled by the plugin */
  int32_t is_default;          /* qforge_bool: this component is the one `--scheme NAME`
                                  picks when no --method is given */
  const char* name;            /* upper case as llm-compressor spells it, e.g. "W8A8" */
  const char* params;          /* the parameter values, "k=v" separated by ';'
                                  (e.g. "bits=4;group_size=128;sym=true") */
  const char* description;     /* one line */
} qforge_scheme_desc;

typedef struct qforge_quantizer_schemes {
  uint32_t struct_size;        /* sizeof(qforge_quantizer_schemes) as compiled by the plugin */
  uint32_t count;
  const qforge_scheme_desc* const* schemes;  /* count pointers */
} qforge_quantizer_schemes;

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_EXT_SCHEMES_H */
