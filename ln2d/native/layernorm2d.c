/* ai.ln2d::LayerNorm2d(X, scale, bias; epsilon) for ONNX Runtime's CPU provider.
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
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ort_abi.h"

enum { BLOCK = 256 }; /* pixels whose statistics are accumulated together */

static const OrtApiTable* api;

#define VERSION_TEXT(version) STRINGIFY(version)
#define STRINGIFY(text) #text

typedef struct {
  float epsilon;
} Kernel;

static OrtStatus* fail(const char* message) {
  return CALL(CreateStatus, OrtStatus* (*)(int, const char*))(ORT_FAIL, message);
}

/* The statistics of `count` pixels starting at `x` (channel stride `plane`), then the output. */
static void normalise_block(const float* x, float* y, int64_t channels, int64_t plane,
                            int64_t count, const float* scale, const float* bias, float epsilon) {
  double sum[BLOCK] = {0}, squares[BLOCK] = {0};
  for (int64_t c = 0; c < channels; c++) {
    const float* row = x + c * plane;
    for (int64_t p = 0; p < count; p++) {
      sum[p] += row[p];
      squares[p] += (double)row[p] * row[p];
    }
  }
  float mean[BLOCK], inverse[BLOCK];
  for (int64_t p = 0; p < count; p++) {
    double m = sum[p] / (double)channels;
    double variance = squares[p] / (double)channels - m * m;
    if (variance < 0) variance = 0; /* rounding; a NaN stays NaN, as in PyTorch */
    mean[p] = (float)m;
    inverse[p] = (float)(1.0 / sqrt(variance + epsilon));
  }
  for (int64_t c = 0; c < channels; c++) {
    const float* row = x + c * plane;
    float* out = y + c * plane;
    for (int64_t p = 0; p < count; p++) out[p] = (row[p] - mean[p]) * inverse[p] * scale[c] + bias[c];
  }
}

/* The tensor's blocks (N x ceil(H*W / BLOCK)), numbered; a thread normalises a range of them.
 * Each block's result depends on that block alone, so any split gives the same bits. */
typedef struct {
  const float* x;
  float* y;
  const float* scale;
  const float* bias;
  int64_t channels, plane, blocks_per_image;
  float epsilon;
  int64_t first, end; /* block range [first, end) */
} Work;

static void* normalise_blocks(void* argument) {
  const Work* w = argument;
  for (int64_t block = w->first; block < w->end; block++) {
    int64_t n = block / w->blocks_per_image, start = (block % w->blocks_per_image) * BLOCK;
    int64_t count = w->plane - start < BLOCK ? w->plane - start : BLOCK;
    int64_t offset = n * w->channels * w->plane + start;
    normalise_block(w->x + offset, w->y + offset, w->channels, w->plane, count, w->scale,
                    w->bias, w->epsilon);
  }
  return NULL;
}

/* Threads for a tensor of `elements` floats: one below MIN_PER_THREAD each (starting threads
 * costs more than it saves), at most the CPUs this process may run on. */
enum { MIN_PER_THREAD = 1 << 16, MAX_THREADS = 64 };

static int thread_count(int64_t elements) {
  cpu_set_t allowed;
  int cpus = sched_getaffinity(0, sizeof allowed, &allowed) == 0 ? CPU_COUNT(&allowed) : 1;
  int64_t wanted = elements / MIN_PER_THREAD;
  if (wanted < 1) wanted = 1;
  if (wanted > cpus) wanted = cpus;
  return (int)(wanted > MAX_THREADS ? MAX_THREADS : wanted);
}

static void layernorm2d(const float* x, float* y, const int64_t* dims, const float* scale,
                        const float* bias, float epsilon) {
  int64_t channels = dims[1], plane = dims[2] * dims[3];
  int64_t per_image = (plane + BLOCK - 1) / BLOCK, blocks = dims[0] * per_image;
  int threads = thread_count(dims[0] * channels * plane);
  Work work[MAX_THREADS];
  pthread_t helpers[MAX_THREADS];
  int running[MAX_THREADS] = {0};
  for (int t = 0; t < threads; t++)
    work[t] = (Work){x, y, scale, bias, channels, plane, per_image, epsilon,
                     blocks * t / threads, blocks * (t + 1) / threads};
  for (int t = 1; t < threads; t++)
    running[t] = pthread_create(&helpers[t], NULL, normalise_blocks, &work[t]) == 0;
  normalise_blocks(&work[0]);
  for (int t = 1; t < threads; t++) {
    if (running[t]) pthread_join(helpers[t], NULL);
    else normalise_blocks(&work[t]); /* a helper that could not start: its range here */
  }
}

/* ---- the custom op, as ONNX Runtime calls it ---- */

static void* create_kernel(const OrtCustomOp* op, const OrtApiTable* table, const OrtKernelInfo* info) {
  (void)op;
  (void)table;
  Kernel* kernel = malloc(sizeof(Kernel)); /* one per node; ONNX Runtime destroys it */
  if (kernel == NULL) return NULL;
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
  layernorm2d(data(x), data(y), dims, data(input(context, 1)), data(input(context, 2)),
              kernel->epsilon);
}

static void destroy(void* state) { free(state); }
static const char* name(const OrtCustomOp* op) { (void)op; return "LayerNorm2d"; }
static const char* provider(const OrtCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static int float_type(const OrtCustomOp* op, size_t index) { (void)op; (void)index; return ONNX_FLOAT; }
static size_t inputs(const OrtCustomOp* op) { (void)op; return 3; }
static size_t outputs(const OrtCustomOp* op) { (void)op; return 1; }
static int required(const OrtCustomOp* op, size_t index) { (void)op; (void)index; return 0; }
static int default_memory(const OrtCustomOp* op, size_t index) { (void)op; (void)index; return 0; }

static OrtCustomOp layernorm2d_op = {
    ORT_API_VERSION_USED, create_kernel, name,     provider, float_type, inputs, float_type,
    outputs,              compute,       destroy,  required, required,   default_memory,
};

OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  api = base->GetApi(ORT_API_VERSION_USED);
  if (api == NULL) {
    /* Too old a runtime for the table declared here: say so through the oldest table. */
    api = base->GetApi(1);
    return api == NULL ? NULL
                       : fail("ln2d native LayerNorm2d needs onnxruntime C API version " VERSION_TEXT(
                             ORT_API_VERSION_USED) " or newer");
  }
  OrtCustomOpDomain* domain = NULL;
  OrtStatus* status =
      CALL(CreateCustomOpDomain, OrtStatus* (*)(const char*, OrtCustomOpDomain**))("ai.ln2d", &domain);
  if (status == NULL)
    status = CALL(CustomOpDomain_Add, OrtStatus* (*)(OrtCustomOpDomain*, const OrtCustomOp*))(
        domain, &layernorm2d_op);
  if (status == NULL)
    status = CALL(AddCustomOpDomain, OrtStatus* (*)(OrtSessionOptions*, OrtCustomOpDomain*))(options, domain);
  return status;
}
