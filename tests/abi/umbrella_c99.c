/* Compile-only check: the umbrella header compiles as strict C99
 * (-std=c99 -Wall -Wextra -pedantic -Werror -Wstrict-prototypes -Wundef
 * -Wshadow), twice in one translation unit, and every public type it declares
 * is complete, so a plugin can be written in plain C. */
#include <qforge/qforge.h>
#include <qforge/qforge.h>

typedef char qforge_umbrella_types_are_complete
    [sizeof(DLDevice) + sizeof(DLDataType) + sizeof(DLTensor) + sizeof(DLManagedTensor) +
     sizeof(qforge_param_desc) + sizeof(qforge_param_value) + sizeof(qforge_host) +
     sizeof(qforge_component_desc) + sizeof(qforge_named_tensor) +
     sizeof(qforge_quantize_input) + sizeof(qforge_quantize_output) + sizeof(qforge_quantizer) +
     sizeof(qforge_inference_layer) + sizeof(qforge_model_services) +
     sizeof(qforge_postprocess) + sizeof(qforge_plugin_entry)];

/* The documented entry declaration is accepted as written in entry.h. */
QFORGE_EXTERN_C QFORGE_EXPORT const qforge_plugin_entry* qforge_plugin_entry_v1(void);
