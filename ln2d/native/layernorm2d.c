/* ai.ln2d::LayerNorm2d(X, scale, bias; epsilon) for ONNX Runtime's CPU provider, in fp32 and
 * (where the compiler has _Float16: gcc 12, clang 15) in fp16 with statistics in double.
 *
 * Per pixel of an NCHW tensor: mean and biased variance over C, epsilon inside the square root,
 * then the per-channel scale and bias (the seed's math). X is read twice, once for the
 * statistics and once for the output, and Y is written once: the loops walk a block of
 * contiguous pixels (W is the innermost axis) for each channel, so every access is sequential
 * and the compiler vectorises the pixel loop.
 *
 * ONNX Runtime loads this library with SessionOptions.register_custom_ops_library(path) and
 * calls RegisterCustomOps. No ONNX Runtime header is needed: ort_abi.h declares the few parts of
 * the C API used here, by their place in the API table.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "levels.h"
#include "ort_abi.h"

enum { BLOCK = 256 }; /* pixels whose statistics are accumulated together */

static const OrtApiTable* api;

#define VERSION_TEXT(version) STRINGIFY(version)
#define STRINGIFY(text) #text

/* Normalises one block of pixels (below, one per element type). */
typedef void (*NormaliseBlock)(const void* x, void* y, int64_t channels, int64_t plane,
                               int64_t count, const void* scale, const void* bias, float epsilon);

/* What differs between the fp32 and the fp16 op. */
typedef struct {
  int onnx_type; /* ONNXTensorElementDataType of X, scale, bias and Y */
  size_t element;
  NormaliseBlock normalise[LEVELS]; /* by x86-64 level (levels.h) */
} ElementType;

typedef struct {
  float epsilon;
  const ElementType* type;
} Kernel;

static OrtStatus* fail(const char* message) {
  return CALL(CreateStatus, OrtStatus* (*)(int, const char*))(ORT_FAIL, message);
}

/* The statistics of `count` pixels starting at `x` (channel stride `plane`), then the output.
 * One body for each element type: fp16 values widen to double for the statistics and to float
 * for the output arithmetic, and only the stored result is rounded back to fp16. Compiled once
 * per x86-64 level (levels.h): AVX-512 on a server, AVX2 on a laptop, SSE2 elsewhere. */
#define NORMALISE_BLOCK(name, attributes, T)                                                      \
  attributes static void name(const void* x_in, void* y_out, int64_t channels, int64_t plane,     \
                              int64_t count, const void* scale_in, const void* bias_in,           \
                              float epsilon) {                                                    \
    const T *x = x_in, *scale = scale_in, *bias = bias_in;                                        \
    T* y = y_out;                                                                                 \
    double sum[BLOCK] = {0}, squares[BLOCK] = {0};                                                \
    for (int64_t c = 0; c < channels; c++) {                                                      \
      const T* row = x + c * plane;                                                               \
      for (int64_t p = 0; p < count; p++) {                                                       \
        sum[p] += row[p];                                                                         \
        squares[p] += (double)row[p] * row[p];                                                    \
      }                                                                                           \
    }                                                                                             \
    float mean[BLOCK], inverse[BLOCK];                                                            \
    for (int64_t p = 0; p < count; p++) {                                                         \
      double m = sum[p] / (double)channels;                                                       \
      double variance = squares[p] / (double)channels - m * m;                                    \
      if (variance < 0) variance = 0; /* rounding; a NaN stays NaN, as in PyTorch */              \
      mean[p] = (float)m;                                                                         \
      inverse[p] = (float)(1.0 / sqrt(variance + epsilon));                                       \
    }                                                                                             \
    for (int64_t c = 0; c < channels; c++) {                                                      \
      const T* row = x + c * plane;                                                               \
      T* out = y + c * plane;                                                                     \
      float s = (float)scale[c], b = (float)bias[c];                                              \
      for (int64_t p = 0; p < count; p++) out[p] = (T)(((float)row[p] - mean[p]) * inverse[p] * s + b); \
    }                                                                                             \
  }

PER_LEVEL(NORMALISE_BLOCK, normalise_block_fp32, float)
#ifdef __FLT16_MAX__ /* the compiler has _Float16: the fp16 op is built too */
PER_LEVEL(NORMALISE_BLOCK, normalise_block_fp16, _Float16)
#endif

/* The tensor's blocks (N x ceil(H*W / BLOCK)), numbered. Each block's result depends on that
 * block alone, so any split of them over threads gives the same bits. */
typedef struct {
  NormaliseBlock normalise;
  size_t element; /* bytes per value */
  const char* x;
  char* y;
  const void* scale;
  const void* bias;
  int64_t channels, plane, blocks_per_image;
  float epsilon;
} Work;

static void normalise_numbered_block(void* argument, size_t block) {
  const Work* w = argument;
  int64_t n = (int64_t)block / w->blocks_per_image;
  int64_t start = ((int64_t)block % w->blocks_per_image) * BLOCK;
  int64_t count = w->plane - start < BLOCK ? w->plane - start : BLOCK;
  size_t offset = (size_t)(n * w->channels * w->plane + start) * w->element;
  w->normalise(w->x + offset, w->y + offset, w->channels, w->plane, count, w->scale, w->bias,
               w->epsilon);
}

/* At least this many floats per batch of blocks: handing a thread less costs more than it saves. */
enum { MIN_PER_BATCH = 1 << 16 };

/* The blocks go to the session's intra-op thread pool (its intra_op_num_threads), in batches of
 * MIN_PER_BATCH floats or more; with one batch, or a pool that refuses, they run here. */
static void layernorm2d(OrtKernelContext* context, const Kernel* kernel, const void* x, void* y,
                        const int64_t* dims, const void* scale, const void* bias) {
  int64_t channels = dims[1], plane = dims[2] * dims[3];
  int64_t per_image = (plane + BLOCK - 1) / BLOCK, blocks = dims[0] * per_image;
  Work work = {kernel->type->normalise[level()], kernel->type->element, x, y, scale, bias, channels, plane,
               per_image, kernel->epsilon};
  int64_t batches = dims[0] * channels * plane / MIN_PER_BATCH;
  if (batches > blocks) batches = blocks;
  if (batches > 1) {
    OrtStatus* status =
        CALL(KernelContext_ParallelFor,
             OrtStatus* (*)(const OrtKernelContext*, void (*)(void*, size_t), size_t, size_t, void*))(
            context, normalise_numbered_block, (size_t)blocks, (size_t)batches, &work);
    if (status == NULL) return;
    CALL(ReleaseStatus, void (*)(OrtStatus*))(status);
  }
  for (int64_t block = 0; block < blocks; block++) normalise_numbered_block(&work, (size_t)block);
}

/* ---- the custom ops, as ONNX Runtime calls them ---- */

/* One OrtCustomOp per element type, all named LayerNorm2d: ONNX Runtime picks the kernel whose
 * types match the node's. Each carries its ElementType right after the struct it hands over. */
typedef struct {
  OrtCustomOp op;
  const ElementType* type;
} TypedOp;

static const ElementType* type_of(const OrtCustomOp* op) { return ((const TypedOp*)op)->type; }

static void* create_kernel(const OrtCustomOp* op, const OrtApiTable* table, const OrtKernelInfo* info) {
  (void)table;
  Kernel* kernel = malloc(sizeof(Kernel)); /* one per node; ONNX Runtime destroys it */
  if (kernel == NULL) return NULL;
  kernel->type = type_of(op);
  kernel->epsilon = 1e-6f;
  OrtStatus* status =
      CALL(KernelInfoGetAttribute_float, OrtStatus* (*)(const OrtKernelInfo*, const char*, float*))(
          info, "epsilon", &kernel->epsilon);
  if (status != NULL) CALL(ReleaseStatus, void (*)(OrtStatus*))(status); /* absent: the default */
  return kernel;
}

static const OrtValue* input(OrtKernelContext* context, size_t index) {
  const OrtValue* value = NULL;
  CALL(KernelContext_GetInput, OrtStatus* (*)(const OrtKernelContext*, size_t, const OrtValue**))(
      context, index, &value);
  return value;
}

static void* data(const OrtValue* value) {
  void* pointer = NULL;
  CALL(GetTensorMutableData, OrtStatus* (*)(OrtValue*, void**))((OrtValue*)value, &pointer);
  return pointer;
}

static void compute(void* state, OrtKernelContext* context) {
  const Kernel* kernel = state;
  const OrtValue* x = input(context, 0);
  OrtTensorTypeAndShapeInfo* info = NULL;
  CALL(GetTensorTypeAndShape, OrtStatus* (*)(const OrtValue*, OrtTensorTypeAndShapeInfo**))(x, &info);
  size_t rank = 0;
  CALL(GetDimensionsCount, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, size_t*))(info, &rank);
  int64_t dims[4] = {0, 0, 0, 0};
  if (rank == 4)
    CALL(GetDimensions, OrtStatus* (*)(const OrtTensorTypeAndShapeInfo*, int64_t*, size_t))(info, dims, 4);
  CALL(ReleaseTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*))(info);
  OrtValue* y = NULL;
  CALL(KernelContext_GetOutput,
       OrtStatus* (*)(OrtKernelContext*, size_t, const int64_t*, size_t, OrtValue**))(
      context, 0, dims, rank == 4 ? 4 : 0, &y);
  if (rank != 4 || dims[0] * dims[1] * dims[2] * dims[3] == 0) return;
  layernorm2d(context, kernel, data(x), data(y), dims, data(input(context, 1)),
              data(input(context, 2)));
}

static void destroy(void* state) { free(state); }
static const char* name(const OrtCustomOp* op) { (void)op; return "LayerNorm2d"; }
static const char* provider(const OrtCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static int element_type(const OrtCustomOp* op, size_t index) { (void)index; return type_of(op)->onnx_type; }
static size_t inputs(const OrtCustomOp* op) { (void)op; return 3; }
static size_t outputs(const OrtCustomOp* op) { (void)op; return 1; }
static int required(const OrtCustomOp* op, size_t index) { (void)op; (void)index; return 0; }
static int default_memory(const OrtCustomOp* op, size_t index) { (void)op; (void)index; return 0; }

static const ElementType fp32 = {ONNX_FLOAT, sizeof(float), LEVEL_TABLE(normalise_block_fp32)};
#ifdef __FLT16_MAX__
static const ElementType fp16 = {ONNX_FLOAT16, sizeof(_Float16),
                                 LEVEL_TABLE(normalise_block_fp16)};
#endif

#define TYPED_OP(type)                                                                          \
  {{ORT_CUSTOM_OP_VERSION, create_kernel, name, provider, element_type, inputs, element_type,   \
    outputs, compute, destroy, required, required, default_memory},                             \
   &type}

static TypedOp ops[] = {
    TYPED_OP(fp32),
#ifdef __FLT16_MAX__
    TYPED_OP(fp16),
#endif
};

OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  api = base->GetApi(ORT_API_VERSION_USED);
  if (api == NULL) {
    /* Too old a runtime for the table declared here: say so through the oldest table. */
    api = base->GetApi(1);
    return api == NULL ? NULL
                       : fail("ln2d native LayerNorm2d needs onnxruntime 1." VERSION_TEXT(
                             ORT_API_VERSION_USED) " or newer (its C API version " VERSION_TEXT(
                             ORT_API_VERSION_USED) ")");
  }
  OrtCustomOpDomain* domain = NULL;
  OrtStatus* status =
      CALL(CreateCustomOpDomain, OrtStatus* (*)(const char*, OrtCustomOpDomain**))("ai.ln2d", &domain);
  for (size_t i = 0; status == NULL && i < sizeof ops / sizeof ops[0]; i++)
    status = CALL(CustomOpDomain_Add, OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*))(
        domain, &ops[i].op);
  if (status == NULL)
    status = CALL(AddCustomOpDomain, OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*))(options, domain);
  return status;
}
