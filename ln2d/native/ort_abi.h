/* The parts of ONNX Runtime's C API that layernorm2d.c uses, declared here because no package
 * ships the official header (onnxruntime_c_api.h).
 *
 * OrtApi is a table of function pointers that only ever grows, versioned by ORT_API_VERSION:
 * a function keeps its place in every later version, so a place is all this file records.
 * Each is the function's index in the table, counted in the documented C API; the library's
 * tests check the results against PyTorch, which a wrong index could not pass.
 */
#ifndef LN2D_ORT_ABI_H
#define LN2D_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

typedef struct OrtStatus OrtStatus;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtValue OrtValue;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef const void* OrtApiTable; /* the OrtApi struct, seen as its table of functions */

typedef struct OrtApiBase {
  const OrtApiTable* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
} OrtApiBase;

/* The API version requested: every index below exists from it on (KernelContext_ParallelFor
 * came in 17, ONNX Runtime 1.17). */
#define ORT_API_VERSION_USED 17
/* The OrtCustomOp layout declared below: its members up to version 13. ONNX Runtime reads the
 * members a custom op's version has, so this is independent of the API version requested. */
#define ORT_CUSTOM_OP_VERSION 13

enum OrtApiIndex {
  CreateStatus = 0,
  CreateCustomOpDomain = 26,
  CustomOpDomain_Add = 27,
  AddCustomOpDomain = 28,
  GetTensorMutableData = 51,
  GetDimensionsCount = 61,
  GetDimensions = 62,
  GetTensorTypeAndShape = 65,
  KernelInfoGetAttribute_float = 85,
  KernelContext_GetInput = 90,
  KernelContext_GetOutput = 91,
  ReleaseStatus = 93,
  ReleaseTensorTypeAndShapeInfo = 99,
  KernelContext_ParallelFor = 274,
};

/* api[index], called with the function's type. */
#define CALL(index, type) ((type)(api[index]))

enum { ORT_FAIL = 1 };         /* OrtErrorCode */
enum { ONNX_FLOAT = 1, ONNX_FLOAT16 = 10 }; /* ONNXTensorElementDataType */

/* OrtCustomOp up to the members of version 13: ONNX Runtime reads no member past what the
 * version says, and calls every member up to it. */
typedef struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const struct OrtCustomOp* op, const OrtApiTable* api, const OrtKernelInfo* info);
  const char* (*GetName)(const struct OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const struct OrtCustomOp* op);
  int (*GetInputType)(const struct OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const struct OrtCustomOp* op);
  int (*GetOutputType)(const struct OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const struct OrtCustomOp* op);
  void (*KernelCompute)(void* kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* kernel);
  int (*GetInputCharacteristic)(const struct OrtCustomOp* op, size_t index);  /* 0: required */
  int (*GetOutputCharacteristic)(const struct OrtCustomOp* op, size_t index); /* 0: required */
  int (*GetInputMemoryType)(const struct OrtCustomOp* op, size_t index);      /* 0: default */
} OrtCustomOp;

#endif
