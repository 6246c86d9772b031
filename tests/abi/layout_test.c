/* Pins the binary layout of every public struct of the qforge C ABI v1.
 *
 * DESIGN.md rule 3: fields are append-only, never reordered or retyped. A
 * change that moves a field, changes its size or inserts padding breaks every
 * plugin built against the old headers; this file turns such a change into a
 * compile error. The expected numbers are those of the LP64 ABI used by
 * x86_64 and aarch64 Linux (and macOS): 8-byte pointers, int64_t and double
 * aligned to 8, 4-byte enums.
 *
 * When v1 grows in a new minor, fields are appended: add their offsets here and
 * raise the struct's expected size; never edit an existing line.
 *
 * It is C99 (compiled with -std=c99 -pedantic), so it uses no _Static_assert:
 * QF_ASSERT declares a char array whose size is -1 when the condition fails.
 * The same file is also compiled as C++ (layout_test_cxx.cpp) so that the
 * host's compiler sees the same layout as a plugin's C compiler. */
#include <qforge/qforge.h>
#include <qforge/ext/schemes.h>
#include <qforge/ext/train.h>

#include <stddef.h>
#include <stdint.h>

#define QF_CONCAT_(a, b) a##b
#define QF_CONCAT(a, b) QF_CONCAT_(a, b)
/* The line number makes each typedef name unique. */
#define QF_ASSERT(cond, tag) \
  typedef char QF_CONCAT(qf_assert_##tag##_line_, __LINE__)[(cond) ? 1 : -1]

/* Offset and size of one field. */
#define QF_FIELD(type, field, offset, size)                          \
  QF_ASSERT(offsetof(type, field) == (offset), type##_##field##_offset); \
  QF_ASSERT(sizeof(((type*)0)->field) == (size), type##_##field##_size)
#define QF_SIZE(type, size) QF_ASSERT(sizeof(type) == (size), type##_size)
/* Every qforge struct starts with a uint32_t struct_size (rule 3). */
#define QF_STRUCT_SIZE_FIRST(type) QF_FIELD(type, struct_size, 0, 4)

/* Enum constants travel as int32_t; their values are part of the ABI. */
#define QF_ENUM(name, value) QF_ASSERT((name) == (value), name)

/* 64-bit pointers with natural alignment of int64_t and double: LP64 Linux and
 * macOS (and, since no field is a `long`, LLP64 Windows too). */
#if UINTPTR_MAX == 0xFFFFFFFFFFFFFFFFu
#define QF_LP64 1
#else
#define QF_LP64 0
#endif

/* ---- fundamental assumptions of the ABI (any platform) ---- */
QF_ASSERT(sizeof(qforge_bool) == 4, bool_is_int32);
QF_ASSERT(sizeof(int32_t) == 4, int32);
QF_ASSERT(sizeof(DLDeviceType) == 4, enum_is_4_bytes); /* breaks under -fshort-enums */
QF_ASSERT(sizeof(DLDataTypeCode) == 4, enum_code_is_4_bytes);
QF_ASSERT(QFORGE_ABI_MAJOR == 1, abi_major_is_1); /* this file pins v1 */

/* ---- enum values ---- */
QF_ENUM(QFORGE_STATUS_OK, 0);
QF_ENUM(QFORGE_STATUS_INVALID_ARGUMENT, 1);
QF_ENUM(QFORGE_STATUS_UNSUPPORTED, 2);
QF_ENUM(QFORGE_STATUS_OUT_OF_MEMORY, 3);
QF_ENUM(QFORGE_STATUS_CANCELLED, 4);
QF_ENUM(QFORGE_STATUS_IO, 5);
QF_ENUM(QFORGE_LOSS_CROSS_ENTROPY, 1);
QF_ENUM(QFORGE_LOSS_KL_TEACHER, 2);
QF_ENUM(QFORGE_LOSS_MSE_TEACHER_LOGITS, 3);
QF_ENUM(QFORGE_LOSS_MSE_TEACHER_BLOCKS, 4);
QF_ENUM(QFORGE_LOSS_MSE_BLOCK_TARGET, 5);
QF_ENUM(QFORGE_STATUS_INTERNAL, 6);

QF_ENUM(QFORGE_PARAM_BOOL, 1);
QF_ENUM(QFORGE_PARAM_INT, 2);
QF_ENUM(QFORGE_PARAM_FLOAT, 3);
QF_ENUM(QFORGE_PARAM_STRING, 4);
QF_ENUM(QFORGE_PARAM_ENUM, 5);
QF_ENUM(QFORGE_PARAM_PATH, 6);
QF_ENUM(QFORGE_PARAM_INT_LIST, 7);
QF_ENUM(QFORGE_PARAM_FLOAT_LIST, 8);
QF_ENUM(QFORGE_PARAM_STRING_LIST, 9);
QF_ENUM(QFORGE_PARAM_FLAG_HAS_MIN, 1);
QF_ENUM(QFORGE_PARAM_FLAG_HAS_MAX, 2);
QF_ENUM(QFORGE_PARAM_FLAG_REQUIRED, 4);

QF_ENUM(QFORGE_COMPONENT_QUANTIZER, 1);
QF_ENUM(QFORGE_COMPONENT_INFERENCE_LAYER, 2);
QF_ENUM(QFORGE_COMPONENT_POSTPROCESS, 3);
QF_ENUM(QFORGE_COMPONENT_PREPROCESS, 4); /* 1.2 */

QF_ENUM(QFORGE_LOG_TRACE, 0);
QF_ENUM(QFORGE_LOG_DEBUG, 1);
QF_ENUM(QFORGE_LOG_INFO, 2);
QF_ENUM(QFORGE_LOG_WARN, 3);
QF_ENUM(QFORGE_LOG_ERROR, 4);

/* DLPack 0.6 enum values (shared with ATen's copy of the header). */
QF_ENUM(DLPACK_VERSION, 60);
QF_ENUM(kDLCPU, 1);
QF_ENUM(kDLCUDA, 2);
QF_ENUM(kDLCUDAHost, 3);
QF_ENUM(kDLOpenCL, 4);
QF_ENUM(kDLVulkan, 7);
QF_ENUM(kDLMetal, 8);
QF_ENUM(kDLVPI, 9);
QF_ENUM(kDLROCM, 10);
QF_ENUM(kDLROCMHost, 11);
QF_ENUM(kDLExtDev, 12);
QF_ENUM(kDLCUDAManaged, 13);
QF_ENUM(kDLInt, 0);
QF_ENUM(kDLUInt, 1);
QF_ENUM(kDLFloat, 2);
QF_ENUM(kDLOpaqueHandle, 3);
QF_ENUM(kDLBfloat, 4);
QF_ENUM(kDLComplex, 5);

/* ---- DLPack structs (fixed in every ABI, pointers aside) ---- */
QF_SIZE(DLDataType, 4);
QF_FIELD(DLDataType, code, 0, 1);
QF_FIELD(DLDataType, bits, 1, 1);
QF_FIELD(DLDataType, lanes, 2, 2);

QF_SIZE(DLDevice, 8);
QF_FIELD(DLDevice, device_type, 0, 4);
QF_FIELD(DLDevice, device_id, 4, 4);

/* The name of the exported entry symbol. */
QF_ASSERT(sizeof(QFORGE_ENTRY_SYMBOL_V1) == sizeof("qforge_plugin_entry_v1"), entry_symbol);

#if QF_LP64

#define P 8 /* pointer and function-pointer size */

/* ---- DLPack ---- */
QF_SIZE(DLTensor, 48);
QF_FIELD(DLTensor, data, 0, P);
QF_FIELD(DLTensor, device, 8, 8);
QF_FIELD(DLTensor, ndim, 16, 4);
QF_FIELD(DLTensor, dtype, 20, 4);
QF_FIELD(DLTensor, shape, 24, P);
QF_FIELD(DLTensor, strides, 32, P);
QF_FIELD(DLTensor, byte_offset, 40, 8);

QF_SIZE(DLManagedTensor, 64);
QF_FIELD(DLManagedTensor, dl_tensor, 0, 48);
QF_FIELD(DLManagedTensor, manager_ctx, 48, P);
QF_FIELD(DLManagedTensor, deleter, 56, P);

/* ---- params.h ---- */
QF_SIZE(qforge_param_desc, 64);
QF_STRUCT_SIZE_FIRST(qforge_param_desc);
QF_FIELD(qforge_param_desc, type, 4, 4);
QF_FIELD(qforge_param_desc, name, 8, P);
QF_FIELD(qforge_param_desc, help, 16, P);
QF_FIELD(qforge_param_desc, default_value, 24, P);
QF_FIELD(qforge_param_desc, choices, 32, P);
QF_FIELD(qforge_param_desc, min, 40, 8);
QF_FIELD(qforge_param_desc, max, 48, 8);
QF_FIELD(qforge_param_desc, flags, 56, 4);
QF_FIELD(qforge_param_desc, reserved, 60, 4);

QF_SIZE(qforge_param_value, 80);
QF_STRUCT_SIZE_FIRST(qforge_param_value);
QF_FIELD(qforge_param_value, type, 4, 4);
QF_FIELD(qforge_param_value, name, 8, P);
QF_FIELD(qforge_param_value, b, 16, 4);
QF_FIELD(qforge_param_value, reserved, 20, 4);
QF_FIELD(qforge_param_value, i, 24, 8);
QF_FIELD(qforge_param_value, f, 32, 8);
QF_FIELD(qforge_param_value, s, 40, P);
QF_FIELD(qforge_param_value, ints, 48, P);
QF_FIELD(qforge_param_value, floats, 56, P);
QF_FIELD(qforge_param_value, strings, 64, P);
QF_FIELD(qforge_param_value, count, 72, 8);

/* ---- host.h ---- */
QF_SIZE(qforge_host, 120);
QF_STRUCT_SIZE_FIRST(qforge_host);
QF_FIELD(qforge_host, abi_major, 4, 4);
QF_FIELD(qforge_host, abi_minor, 8, 4);
QF_FIELD(qforge_host, reserved, 12, 4);
QF_FIELD(qforge_host, name, 16, P);
QF_FIELD(qforge_host, version, 24, P);
QF_FIELD(qforge_host, host_data, 32, P);
QF_FIELD(qforge_host, log, 40, P);
QF_FIELD(qforge_host, status_create, 48, P);
QF_FIELD(qforge_host, status_code, 56, P);
QF_FIELD(qforge_host, status_message, 64, P);
QF_FIELD(qforge_host, status_destroy, 72, P);
QF_FIELD(qforge_host, progress, 80, P);
QF_FIELD(qforge_host, is_cancelled, 88, P);
QF_FIELD(qforge_host, alloc, 96, P);
QF_FIELD(qforge_host, free, 104, P);
QF_FIELD(qforge_host, get_extension, 112, P);

/* ---- component.h ---- */
QF_SIZE(qforge_component_desc, 104);
QF_STRUCT_SIZE_FIRST(qforge_component_desc);
QF_FIELD(qforge_component_desc, kind, 4, 4);
QF_FIELD(qforge_component_desc, min_host_minor, 8, 4);
QF_FIELD(qforge_component_desc, reserved, 12, 4);
QF_FIELD(qforge_component_desc, id, 16, P);
QF_FIELD(qforge_component_desc, name, 24, P);
QF_FIELD(qforge_component_desc, version, 32, P);
QF_FIELD(qforge_component_desc, vendor, 40, P);
QF_FIELD(qforge_component_desc, license, 48, P);
QF_FIELD(qforge_component_desc, description, 56, P);
QF_FIELD(qforge_component_desc, features, 64, P);
QF_FIELD(qforge_component_desc, params, 72, P);
QF_FIELD(qforge_component_desc, param_count, 80, 4);
QF_FIELD(qforge_component_desc, reserved2, 84, 4);
QF_FIELD(qforge_component_desc, vtable, 88, P);
QF_FIELD(qforge_component_desc, get_extension, 96, P);

QF_SIZE(qforge_named_tensor, 24);
QF_STRUCT_SIZE_FIRST(qforge_named_tensor);
QF_FIELD(qforge_named_tensor, reserved, 4, 4);
QF_FIELD(qforge_named_tensor, name, 8, P);
QF_FIELD(qforge_named_tensor, tensor, 16, P);

/* ---- quantizer.h ---- */
QF_SIZE(qforge_quantize_input, 96); /* 88 in 1.0 and 1.1 */
QF_STRUCT_SIZE_FIRST(qforge_quantize_input);
QF_FIELD(qforge_quantize_input, reserved, 4, 4);
QF_FIELD(qforge_quantize_input, layer_name, 8, P);
QF_FIELD(qforge_quantize_input, weight, 16, P);
QF_FIELD(qforge_quantize_input, bias, 24, P);
QF_FIELD(qforge_quantize_input, hessian, 32, P);
QF_FIELD(qforge_quantize_input, nsamples, 40, 8);
QF_FIELD(qforge_quantize_input, inputs_fp, 48, P);
QF_FIELD(qforge_quantize_input, inputs_q, 56, P);
QF_FIELD(qforge_quantize_input, act_stats, 64, P);
QF_FIELD(qforge_quantize_input, params, 72, P);
QF_FIELD(qforge_quantize_input, param_count, 80, 4);
QF_FIELD(qforge_quantize_input, reserved2, 84, 4);
QF_FIELD(qforge_quantize_input, act_absmax, 88, P); /* 1.2 */

QF_SIZE(qforge_quantize_output, 48);
QF_STRUCT_SIZE_FIRST(qforge_quantize_output);
QF_FIELD(qforge_quantize_output, reserved, 4, 4);
QF_FIELD(qforge_quantize_output, host_data, 8, P);
QF_FIELD(qforge_quantize_output, set_format, 16, P);
QF_FIELD(qforge_quantize_output, add_tensor, 24, P);
QF_FIELD(qforge_quantize_output, set_dequantized, 32, P);
QF_FIELD(qforge_quantize_output, set_metric, 40, P);

QF_SIZE(qforge_quantizer, 24);
QF_STRUCT_SIZE_FIRST(qforge_quantizer);
QF_FIELD(qforge_quantizer, reserved, 4, 4);
QF_FIELD(qforge_quantizer, output_formats, 8, P);
QF_FIELD(qforge_quantizer, quantize, 16, P);

/* ---- inference_layer.h ---- */
QF_SIZE(qforge_inference_layer, 64);
QF_STRUCT_SIZE_FIRST(qforge_inference_layer);
QF_FIELD(qforge_inference_layer, reserved, 4, 4);
QF_FIELD(qforge_inference_layer, formats, 8, P);
QF_FIELD(qforge_inference_layer, create, 16, P);
QF_FIELD(qforge_inference_layer, destroy, 24, P);
QF_FIELD(qforge_inference_layer, shape, 32, P);
QF_FIELD(qforge_inference_layer, forward, 40, P);
QF_FIELD(qforge_inference_layer, backward_input, 48, P);
QF_FIELD(qforge_inference_layer, dequantize, 56, P);

/* ---- postprocess.h ---- */
QF_SIZE(qforge_model_services, 88); /* 48 in 1.0, 64 in 1.1, 80 in 1.2 */
QF_STRUCT_SIZE_FIRST(qforge_model_services);
QF_FIELD(qforge_model_services, reserved, 4, 4);
QF_FIELD(qforge_model_services, host_data, 8, P);
QF_FIELD(qforge_model_services, layer_count, 16, P);
QF_FIELD(qforge_model_services, layer_name, 24, P);
QF_FIELD(qforge_model_services, get_parameter, 32, P);
QF_FIELD(qforge_model_services, set_parameter, 40, P);
/* appended in 1.1 */
QF_FIELD(qforge_model_services, block_count, 48, P);
QF_FIELD(qforge_model_services, layer_info, 56, P);
QF_FIELD(qforge_model_services, input_source, 64, P); /* 1.2 */
QF_FIELD(qforge_model_services, input_stats, 72, P);  /* 1.2 */
QF_FIELD(qforge_model_services, input_gram, 80, P);   /* 1.3 */

/* ---- ext/train.h (1.1) ---- */
QF_SIZE(qforge_loss_term, 40);
QF_STRUCT_SIZE_FIRST(qforge_loss_term);
QF_FIELD(qforge_loss_term, kind, 4, 4);
QF_FIELD(qforge_loss_term, weight, 8, 8);
QF_FIELD(qforge_loss_term, temperature, 16, 8);
QF_FIELD(qforge_loss_term, blocks, 24, P);
QF_FIELD(qforge_loss_term, block_count, 32, 4);
QF_FIELD(qforge_loss_term, reserved, 36, 4);

QF_SIZE(qforge_train_config, 112);
QF_STRUCT_SIZE_FIRST(qforge_train_config);
QF_FIELD(qforge_train_config, teacher, 4, 4);
QF_FIELD(qforge_train_config, max_length, 8, 8);
QF_FIELD(qforge_train_config, max_samples, 16, 8);
QF_FIELD(qforge_train_config, batch_size, 24, 8);
QF_FIELD(qforge_train_config, shuffle_seed, 32, 8);
QF_FIELD(qforge_train_config, lr, 40, 8);
QF_FIELD(qforge_train_config, weight_decay, 48, 8);
QF_FIELD(qforge_train_config, beta1, 56, 8);
QF_FIELD(qforge_train_config, beta2, 64, 8);
QF_FIELD(qforge_train_config, eps, 72, 8);
QF_FIELD(qforge_train_config, max_grad_norm, 80, 8);
QF_FIELD(qforge_train_config, teacher_top_k, 88, 4);
QF_FIELD(qforge_train_config, reserved, 92, 4);
QF_FIELD(qforge_train_config, teacher_cache_temperature, 96, 8);
QF_FIELD(qforge_train_config, holdout, 104, 8);

QF_SIZE(qforge_adapter_vtable, 64);
QF_STRUCT_SIZE_FIRST(qforge_adapter_vtable);
QF_FIELD(qforge_adapter_vtable, reserved, 4, 4);
QF_FIELD(qforge_adapter_vtable, param_count, 8, P);
QF_FIELD(qforge_adapter_vtable, param, 16, P);
QF_FIELD(qforge_adapter_vtable, forward, 24, P);
QF_FIELD(qforge_adapter_vtable, backward, 32, P);
QF_FIELD(qforge_adapter_vtable, merge, 40, P);
QF_FIELD(qforge_adapter_vtable, export_format, 48, P);
QF_FIELD(qforge_adapter_vtable, destroy, 56, P);

QF_SIZE(qforge_host_train, 128);
QF_STRUCT_SIZE_FIRST(qforge_host_train);
QF_FIELD(qforge_host_train, reserved, 4, 4);
QF_FIELD(qforge_host_train, trainer_create, 8, P);
QF_FIELD(qforge_host_train, trainer_destroy, 16, P);
QF_FIELD(qforge_host_train, attach_adapter, 24, P);
QF_FIELD(qforge_host_train, batch_count, 32, P);
QF_FIELD(qforge_host_train, set_schedule, 40, P);
QF_FIELD(qforge_host_train, loss_backward, 48, P);
QF_FIELD(qforge_host_train, step, 56, P);
QF_FIELD(qforge_host_train, save_state, 64, P);
QF_FIELD(qforge_host_train, restore_state, 72, P);
QF_FIELD(qforge_host_train, tune_layer, 80, P);
QF_FIELD(qforge_host_train, tune_layer_codes, 88, P);
QF_FIELD(qforge_host_train, set_schedule_shape, 96, P);
QF_FIELD(qforge_host_train, evaluate, 104, P);
QF_FIELD(qforge_host_train, keep_state, 112, P);
QF_FIELD(qforge_host_train, revert_state, 120, P);

QF_SIZE(qforge_layer_tunable, 56);
QF_STRUCT_SIZE_FIRST(qforge_layer_tunable);
QF_FIELD(qforge_layer_tunable, reserved, 4, 4);
QF_FIELD(qforge_layer_tunable, param_count, 8, P);
QF_FIELD(qforge_layer_tunable, param, 16, P);
QF_FIELD(qforge_layer_tunable, backward_params, 24, P);
QF_FIELD(qforge_layer_tunable, update, 32, P);
QF_FIELD(qforge_layer_tunable, store, 40, P);
QF_FIELD(qforge_layer_tunable, tune_codes, 48, P);

QF_SIZE(qforge_postprocess, 24); /* 16 in 1.0 */
QF_STRUCT_SIZE_FIRST(qforge_postprocess);
QF_FIELD(qforge_postprocess, reserved, 4, 4);
QF_FIELD(qforge_postprocess, run, 8, P);
QF_FIELD(qforge_postprocess, run_block, 16, P); /* 1.1 */

/* ---- preprocess.h (1.2) ---- */
QF_SIZE(qforge_preprocess, 16);
QF_STRUCT_SIZE_FIRST(qforge_preprocess);
QF_FIELD(qforge_preprocess, reserved, 4, 4);
QF_FIELD(qforge_preprocess, run_block, 8, P);

/* ---- ext/schemes.h (1.2) ---- */
QF_SIZE(qforge_scheme_desc, 32);
QF_STRUCT_SIZE_FIRST(qforge_scheme_desc);
QF_FIELD(qforge_scheme_desc, is_default, 4, 4);
QF_FIELD(qforge_scheme_desc, name, 8, P);
QF_FIELD(qforge_scheme_desc, params, 16, P);
QF_FIELD(qforge_scheme_desc, description, 24, P);
QF_SIZE(qforge_quantizer_schemes, 16);
QF_STRUCT_SIZE_FIRST(qforge_quantizer_schemes);
QF_FIELD(qforge_quantizer_schemes, count, 4, 4);
QF_FIELD(qforge_quantizer_schemes, schemes, 8, P);

/* ---- entry.h ---- */
QF_SIZE(qforge_plugin_entry, 64);
QF_STRUCT_SIZE_FIRST(qforge_plugin_entry);
QF_FIELD(qforge_plugin_entry, abi_major, 4, 4);
QF_FIELD(qforge_plugin_entry, abi_minor, 8, 4);
QF_FIELD(qforge_plugin_entry, reserved, 12, 4);
QF_FIELD(qforge_plugin_entry, name, 16, P);
QF_FIELD(qforge_plugin_entry, version, 24, P);
QF_FIELD(qforge_plugin_entry, init, 32, P);
QF_FIELD(qforge_plugin_entry, deinit, 40, P);
QF_FIELD(qforge_plugin_entry, component_count, 48, P);
QF_FIELD(qforge_plugin_entry, get_component, 56, P);

#undef P

#else /* not LP64 */
/* Other data models are not pinned yet; only the portable checks above and
 * the struct_size-first rule apply. */
QF_STRUCT_SIZE_FIRST(qforge_param_desc);
QF_STRUCT_SIZE_FIRST(qforge_param_value);
QF_STRUCT_SIZE_FIRST(qforge_host);
QF_STRUCT_SIZE_FIRST(qforge_component_desc);
QF_STRUCT_SIZE_FIRST(qforge_named_tensor);
QF_STRUCT_SIZE_FIRST(qforge_quantize_input);
QF_STRUCT_SIZE_FIRST(qforge_quantize_output);
QF_STRUCT_SIZE_FIRST(qforge_quantizer);
QF_STRUCT_SIZE_FIRST(qforge_inference_layer);
QF_STRUCT_SIZE_FIRST(qforge_model_services);
QF_STRUCT_SIZE_FIRST(qforge_postprocess);
QF_STRUCT_SIZE_FIRST(qforge_preprocess);
QF_STRUCT_SIZE_FIRST(qforge_scheme_desc);
QF_STRUCT_SIZE_FIRST(qforge_quantizer_schemes);
QF_STRUCT_SIZE_FIRST(qforge_plugin_entry);
QF_STRUCT_SIZE_FIRST(qforge_loss_term);
QF_STRUCT_SIZE_FIRST(qforge_train_config);
QF_STRUCT_SIZE_FIRST(qforge_adapter_vtable);
QF_STRUCT_SIZE_FIRST(qforge_host_train);
QF_STRUCT_SIZE_FIRST(qforge_layer_tunable);
#endif /* QF_LP64 */

/* The entry function type must accept the exported symbol's signature. */
static const qforge_plugin_entry* qf_example_entry(void) { return NULL; }
static const qforge_plugin_entry_fn qf_example_entry_fn = &qf_example_entry;

int main(void) {
  /* Everything is checked at compile time; reaching main means it passed.
   * The runtime check keeps the entry-type check from being optimised away. */
  return qf_example_entry_fn() == NULL ? 0 : 1;
}
