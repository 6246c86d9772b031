/* DLPack 0.6 tensor ABI, as used by qforge (DESIGN.md rule 4).
 *
 * Declared here from the DLPack specification (https://dmlc.github.io/dlpack/)
 * so that the SDK has no dependency. It uses DLPack's own include guard and
 * identical declarations, so a translation unit that includes another copy of
 * dlpack.h (0.6 or 0.7) first sees one definition of each type.
 *
 * qforge conventions for tensors crossing the ABI:
 *  - `strides` is always filled (never NULL), in elements;
 *  - producers emit `byte_offset = 0`; consumers honour any value;
 *  - a consumer rejects dtypes/devices it does not know with
 *    QFORGE_STATUS_UNSUPPORTED instead of guessing;
 *  - a `DLTensor*` argument is borrowed for the duration of the call;
 *  - a `DLManagedTensor*` moves ownership: the receiver calls `deleter` exactly
 *    once (when non-NULL). */
#ifndef DLPACK_DLPACK_H_
#define DLPACK_DLPACK_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DLPACK_VERSION 60

typedef enum {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

typedef enum {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U
} DLDataTypeCode;

typedef struct {
  uint8_t code;   /* a DLDataTypeCode */
  uint8_t bits;   /* bits per lane: 8, 16, 32, 64 */
  uint16_t lanes; /* 1 for scalar types */
} DLDataType;

typedef struct {
  void* data;          /* base pointer; element 0 is at data + byte_offset */
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;      /* ndim entries */
  int64_t* strides;    /* ndim entries, in elements; qforge always fills it */
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

#ifdef __cplusplus
}
#endif

#endif /* DLPACK_DLPACK_H_ */
