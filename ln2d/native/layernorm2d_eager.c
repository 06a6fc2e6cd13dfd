/* LayerNorm2d's forward and backward for PyTorch's eager mode, on contiguous NCHW or NHWC
 * (channels_last) buffers.
 *
 * PyTorch has no kernel that normalises over a non-innermost axis: F.layer_norm needs C last
 * (a transpose copy for NCHW), and var_mean over dim 1 of NCHW is a slow strided reduction.
 * Here a block of contiguous pixels is walked channel by channel, so every access is
 * sequential, the compiler vectorises the pixel loop, and the block stays in cache between
 * the passes over it: forward reads X once from memory and writes Y; backward reads X and dY
 * once and writes dX. What backward needs is X plus a mean and an inverse deviation per pixel,
 * as for F.layer_norm. NHWC rows are the simple case, one pixel's channels after another; they
 * are here for fp16 / bf16, whose parameter gradients PyTorch's CPU kernel sums in bf16.
 *
 * Numerics: two passes per pixel, the mean and then the centred squares, so there is no
 * cancellation whatever the offset; sums over the channels go CHUNK channels at a time in float,
 * then in double; fp16 and bf16 values are widened to float (statistics, parameters and their
 * gradients stay fp32), fp64 stays fp64. The parameters' gradients are summed in double.
 * A NaN or Inf anywhere in a pixel's channels makes that pixel NaN, as in F.layer_norm.
 *
 * Called through ctypes (ln2d/native/eager.py): no Python or PyTorch header is needed. It runs
 * on as many threads as the caller asks for (torch.get_num_threads()): PyTorch's own OpenMP
 * pool where the process has one, else threads of its own.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "levels.h"

enum { FLOAT32 = 0, FLOAT64 = 1, BFLOAT16 = 2, FLOAT16 = 3 }; /* eager.py's dtype codes */
enum { MAX_BLOCK = 256 }; /* pixels per block, at most */
enum { BLOCK_VALUES = 32768 }; /* channels x pixels per block: X's and dY's blocks fit in L2 */
enum { MIN_PER_THREAD = 1 << 16 }; /* values per thread, at least: a thread costs ~20 us */
enum { MAX_THREADS = 256 };
/* Sums over channels run in the element's precision for CHUNK channels at a time, then in
 * double: nearly double's accuracy at single precision's vector width. */
enum { CHUNK = 8 };

/* What one call computes. `F` below is float, or double for fp64 tensors. */
typedef struct {
  const void *x, *dy;          /* T[N, C, H*W] */
  const void *weight, *bias;   /* F[C], NULL without affine */
  void *y, *dx;                /* T[N, C, H*W] */
  void *mean, *rstd;           /* F[N, H*W]; forward may leave them NULL (inference) */
  double *dweight, *dbias;     /* backward: [threads][C] partial sums; NULL without affine */
  int64_t images, channels, plane, block;
  double eps;
} Problem;

typedef void (*BlockFunction)(const Problem* p, int64_t image, int64_t start, int64_t count,
                              int thread);

/* bf16 is the top half of an fp32: widening is a shift; narrowing rounds to nearest even and
 * keeps a NaN a NaN (rounding could carry a NaN's payload into an Inf). */
static inline float bf16_load(uint16_t v) {
  uint32_t u = (uint32_t)v << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint16_t bf16_store(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (uint16_t)(f != f ? (u >> 16) | 0x40u : rounded);
}
#define WIDEN(v) (v)
#define NARROW_TO(T) (T)

/* y = (x - mean) * rstd * weight + bias for `count` pixels from `start` of one image. */
#define FORWARD_BLOCK(name, attributes, T, F, LOAD, STORE)                                    \
  attributes static void name(const Problem* p, int64_t image, int64_t start,                 \
                              int64_t count, int thread) {                                    \
    (void)thread;                                                                             \
    const int64_t C = p->channels, plane = p->plane, offset = image * C * plane + start;      \
    const T* x = (const T*)p->x + offset;                                                     \
    T* y = (T*)p->y + offset;                                                                 \
    const F *weight = p->weight, *bias = p->bias;                                             \
    double sum[MAX_BLOCK] = {0}, squares[MAX_BLOCK] = {0};                                    \
    F mean[MAX_BLOCK], rstd[MAX_BLOCK], part[MAX_BLOCK];                                      \
    for (int64_t c0 = 0; c0 < C; c0 += CHUNK) {                                               \
      for (int64_t i = 0; i < count; i++) part[i] = 0;                                        \
      for (int64_t c = c0; c < C && c < c0 + CHUNK; c++)                                      \
        for (int64_t i = 0; i < count; i++) part[i] += LOAD(x[c * plane + i]);               \
      for (int64_t i = 0; i < count; i++) sum[i] += part[i];                                  \
    }                                                                                         \
    for (int64_t i = 0; i < count; i++) mean[i] = (F)(sum[i] / (double)C);                   \
    /* Squares in double: a finite value near fp32's largest squares past its range. */     \
    for (int64_t c = 0; c < C; c++)                                                           \
      for (int64_t i = 0; i < count; i++) {                                                   \
        double d = (double)((F)LOAD(x[c * plane + i]) - mean[i]);                             \
        squares[i] += d * d;                                                                  \
      }                                                                                       \
    for (int64_t i = 0; i < count; i++)                                                       \
      rstd[i] = (F)(1.0 / sqrt(squares[i] / (double)C + p->eps));                             \
    if (p->mean != NULL) {                                                                    \
      memcpy((F*)p->mean + image * plane + start, mean, (size_t)count * sizeof(F));           \
      memcpy((F*)p->rstd + image * plane + start, rstd, (size_t)count * sizeof(F));           \
    }                                                                                         \
    for (int64_t c = 0; c < C; c++) {                                                         \
      const T* row = x + c * plane;                                                           \
      T* out = y + c * plane;                                                                 \
      F w = weight ? weight[c] : (F)1, b = bias ? bias[c] : (F)0;                             \
      for (int64_t i = 0; i < count; i++)                                                     \
        out[i] = STORE(((F)LOAD(row[i]) - mean[i]) * rstd[i] * w + b);                        \
    }                                                                                         \
  }

/* dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)) with g = dy * weight and
 * xhat = (x - mean) * rstd; this thread's dweight += sum(dy * xhat), dbias += sum(dy). */
#define BACKWARD_BLOCK(name, attributes, T, F, LOAD, STORE)                                   \
  attributes static void name(const Problem* p, int64_t image, int64_t start,                 \
                              int64_t count, int thread) {                                    \
    const int64_t C = p->channels, plane = p->plane, offset = image * C * plane + start;      \
    const T *x = (const T*)p->x + offset, *dy = (const T*)p->dy + offset;                     \
    T* dx = (T*)p->dx + offset;                                                               \
    const F* weight = p->weight;                                                              \
    const F* mean = (const F*)p->mean + image * plane + start;                                \
    const F* rstd = (const F*)p->rstd + image * plane + start;                                \
    double* dweight = p->dweight ? p->dweight + (int64_t)thread * C : NULL;                   \
    double* dbias = p->dbias ? p->dbias + (int64_t)thread * C : NULL;                         \
    double g_sum[MAX_BLOCK] = {0}, gx_sum[MAX_BLOCK] = {0};                                   \
    F g_part[MAX_BLOCK], gx_part[MAX_BLOCK];                                                  \
    for (int64_t c0 = 0; c0 < C; c0 += CHUNK) {                                               \
      for (int64_t i = 0; i < count; i++) g_part[i] = gx_part[i] = 0;                         \
      for (int64_t c = c0; c < C && c < c0 + CHUNK; c++) {                                    \
        const T *xr = x + c * plane, *dyr = dy + c * plane;                                   \
        F w = weight ? weight[c] : (F)1;                                                      \
        double dw = 0, db = 0; /* over the block's pixels: in double, vectorised or not */   \
        _Pragma("omp simd reduction(+ : dw, db)") for (int64_t i = 0; i < count; i++) {       \
          F xhat = ((F)LOAD(xr[i]) - mean[i]) * rstd[i], g = (F)LOAD(dyr[i]);                 \
          dw += g * xhat;                                                                     \
          db += g;                                                                            \
          g *= w;                                                                             \
          g_part[i] += g;                                                                     \
          gx_part[i] += g * xhat;                                                             \
        }                                                                                     \
        if (dweight) dweight[c] += dw;                                                        \
        if (dbias) dbias[c] += db;                                                            \
      }                                                                                       \
      for (int64_t i = 0; i < count; i++) {                                                   \
        g_sum[i] += g_part[i];                                                                \
        gx_sum[i] += gx_part[i];                                                              \
      }                                                                                       \
    }                                                                                         \
    F g_mean[MAX_BLOCK], gx_mean[MAX_BLOCK];                                                  \
    for (int64_t i = 0; i < count; i++) {                                                     \
      g_mean[i] = (F)(g_sum[i] / (double)C);                                                  \
      gx_mean[i] = (F)(gx_sum[i] / (double)C);                                                \
    }                                                                                         \
    for (int64_t c = 0; c < C; c++) {                                                         \
      const T *xr = x + c * plane, *dyr = dy + c * plane;                                     \
      T* out = dx + c * plane;                                                                \
      F w = weight ? weight[c] : (F)1;                                                        \
      for (int64_t i = 0; i < count; i++) {                                                   \
        F xhat = ((F)LOAD(xr[i]) - mean[i]) * rstd[i];                                        \
        out[i] = STORE(rstd[i] * ((F)LOAD(dyr[i]) * w - g_mean[i] - xhat * gx_mean[i]));      \
      }                                                                                       \
    }                                                                                         \
  }

/* The same for channels_last (NHWC) tensors: each pixel's C values are one contiguous row, so
 * the loops run along the channels, and the parameters' partial sums are added row by row. */
#define FORWARD_ROWS(name, attributes, T, F, LOAD, STORE)                                     \
  attributes static void name(const Problem* p, int64_t image, int64_t start,                 \
                              int64_t count, int thread) {                                    \
    (void)image;                                                                              \
    (void)thread;                                                                             \
    const int64_t C = p->channels;                                                            \
    const F *weight = p->weight, *bias = p->bias;                                             \
    for (int64_t r = start; r < start + count; r++) {                                         \
      const T* row = (const T*)p->x + r * C;                                                  \
      T* out = (T*)p->y + r * C;                                                              \
      double sum = 0, squares = 0;                                                            \
      _Pragma("omp simd reduction(+ : sum)") for (int64_t c = 0; c < C; c++)                  \
          sum += LOAD(row[c]);                                                                \
      const double exact_mean = sum / (double)C;                                              \
      _Pragma("omp simd reduction(+ : squares)") for (int64_t c = 0; c < C; c++) {            \
        double d = (double)LOAD(row[c]) - exact_mean;                                         \
        squares += d * d;                                                                     \
      }                                                                                       \
      const F mean = (F)exact_mean, rstd = (F)(1.0 / sqrt(squares / (double)C + p->eps));     \
      if (p->mean != NULL) {                                                                  \
        ((F*)p->mean)[r] = mean;                                                              \
        ((F*)p->rstd)[r] = rstd;                                                              \
      }                                                                                       \
      for (int64_t c = 0; c < C; c++) {                                                       \
        F w = weight ? weight[c] : (F)1, b = bias ? bias[c] : (F)0;                           \
        out[c] = STORE(((F)LOAD(row[c]) - mean) * rstd * w + b);                              \
      }                                                                                       \
    }                                                                                         \
  }

#define BACKWARD_ROWS(name, attributes, T, F, LOAD, STORE)                                    \
  attributes static void name(const Problem* p, int64_t image, int64_t start,                 \
                              int64_t count, int thread) {                                    \
    (void)image;                                                                              \
    const int64_t C = p->channels;                                                            \
    const F* weight = p->weight;                                                              \
    double* dweight = p->dweight ? p->dweight + (int64_t)thread * C : NULL;                   \
    double* dbias = p->dbias ? p->dbias + (int64_t)thread * C : NULL;                         \
    for (int64_t r = start; r < start + count; r++) {                                         \
      const T *xr = (const T*)p->x + r * C, *dyr = (const T*)p->dy + r * C;                   \
      T* out = (T*)p->dx + r * C;                                                             \
      const F mean = ((const F*)p->mean)[r], rstd = ((const F*)p->rstd)[r];                   \
      double g_sum = 0, gx_sum = 0;                                                           \
      _Pragma("omp simd reduction(+ : g_sum, gx_sum)") for (int64_t c = 0; c < C; c++) {      \
        F xhat = ((F)LOAD(xr[c]) - mean) * rstd, g = (F)LOAD(dyr[c]) * (weight ? weight[c] : (F)1); \
        g_sum += g;                                                                           \
        gx_sum += g * xhat;                                                                   \
      }                                                                                       \
      if (dweight)                                                                            \
        for (int64_t c = 0; c < C; c++)                                                       \
          dweight[c] += (F)LOAD(dyr[c]) * (((F)LOAD(xr[c]) - mean) * rstd);                   \
      if (dbias)                                                                              \
        for (int64_t c = 0; c < C; c++) dbias[c] += LOAD(dyr[c]);                             \
      const F g_mean = (F)(g_sum / (double)C), gx_mean = (F)(gx_sum / (double)C);             \
      for (int64_t c = 0; c < C; c++) {                                                       \
        F xhat = ((F)LOAD(xr[c]) - mean) * rstd, w = weight ? weight[c] : (F)1;              \
        out[c] = STORE(rstd * ((F)LOAD(dyr[c]) * w - g_mean - xhat * gx_mean));               \
      }                                                                                       \
    }                                                                                         \
  }

/* Every kernel of one element type: [level][layout][direction], layout 0 NCHW, 1 channels_last;
 * each compiled once per x86-64 level (levels.h). */
typedef struct {
  BlockFunction kernel[LEVELS][2][2];
} Kernels;
enum { FORWARD = 0, BACKWARD = 1 };

#define LAYOUTS(at_level, suffix)                                      \
  {{at_level(forward_##suffix), at_level(backward_##suffix)},          \
   {at_level(forward_rows_##suffix), at_level(backward_rows_##suffix)}}
#define KERNELS(suffix, T, F, LOAD, STORE)                             \
  PER_LEVEL(FORWARD_BLOCK, forward_##suffix, T, F, LOAD, STORE)        \
  PER_LEVEL(BACKWARD_BLOCK, backward_##suffix, T, F, LOAD, STORE)      \
  PER_LEVEL(FORWARD_ROWS, forward_rows_##suffix, T, F, LOAD, STORE)    \
  PER_LEVEL(BACKWARD_ROWS, backward_rows_##suffix, T, F, LOAD, STORE)  \
  static const Kernels kernels_##suffix = {                            \
      {LAYOUTS(AT_DEFAULT, suffix), LAYOUTS(AT_V3, suffix), LAYOUTS(AT_V4, suffix)}};

KERNELS(fp32, float, float, WIDEN, NARROW_TO(float))
KERNELS(fp64, double, double, WIDEN, NARROW_TO(double))
KERNELS(bf16, uint16_t, float, bf16_load, bf16_store)
#ifdef __FLT16_MAX__ /* the compiler has _Float16 (gcc 12, clang 15): fp16 is built too */
KERNELS(fp16, _Float16, float, WIDEN, NARROW_TO(_Float16))
#define KERNELS_FP16 &kernels_fp16
#else
#define KERNELS_FP16 NULL
#endif

/* By eager.py's dtype code; NULL where this build lacks the type. */
static const Kernels* const by_dtype[] = {&kernels_fp32, &kernels_fp64, &kernels_bf16, KERNELS_FP16};

/* ---- blocks over threads ---- */

typedef struct {
  const Problem* problem;
  BlockFunction function;
  int64_t first, last; /* block numbers */
  int thread;
} Share;

static void* run_share(void* argument) {
  const Share* s = argument;
  const Problem* p = s->problem;
  int64_t per_image = (p->plane + p->block - 1) / p->block;
  for (int64_t b = s->first; b < s->last; b++) {
    int64_t start = (b % per_image) * p->block;
    int64_t count = p->plane - start < p->block ? p->plane - start : p->block;
    s->function(p, b / per_image, start, count, s->thread);
  }
  return NULL;
}

/* PyTorch's own OpenMP runtime, where the process has one (torch's wheels load libgomp into the
 * global scope): the shares then run on torch's thread pool, whose threads would otherwise
 * spin-wait beside ours on the same cores after each torch op. Weak symbols, resolved when this
 * library is loaded (after torch); NULL without such a runtime, and then pthreads do it. */
extern void GOMP_parallel(void (*function)(void*), void* data, unsigned threads, unsigned flags)
    __attribute__((weak));
extern int omp_get_thread_num(void) __attribute__((weak));
extern int omp_get_num_threads(void) __attribute__((weak));

typedef struct {
  Share* shares;
  int count;
} Team;

static void run_team_member(void* argument) {
  const Team* team = argument;
  /* The runtime may start fewer threads than asked: each takes every size-th share. */
  for (int s = omp_get_thread_num(); s < team->count; s += omp_get_num_threads())
    run_share(&team->shares[s]);
}

static void run_with_pthreads(Share* shares, int count) {
  pthread_t ids[MAX_THREADS];
  int started[MAX_THREADS] = {0};
  for (int t = 1; t < count; t++)
    started[t] = pthread_create(&ids[t], NULL, run_share, &shares[t]) == 0;
  run_share(&shares[0]);
  for (int t = 1; t < count; t++) {
    if (started[t]) pthread_join(ids[t], NULL);
    else run_share(&shares[t]); /* no thread to be had: do its share here */
  }
}

/* The blocks in `threads` contiguous ranges (fewer for a small tensor); returns how many. Each
 * block's output depends on that block alone; the parameters' partial sums are per range, and
 * the caller adds them in order, so a given thread count gives the same bits every time. */
static int run_blocks(Problem* p, BlockFunction function, int threads) {
  int64_t blocks = p->images * ((p->plane + p->block - 1) / p->block);
  int64_t useful = p->images * p->channels * p->plane / MIN_PER_THREAD;
  if (threads > useful) threads = (int)useful;
  if (threads > blocks) threads = (int)blocks;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (threads < 1) threads = 1;
  Share shares[MAX_THREADS];
  for (int t = 0; t < threads; t++)
    shares[t] = (Share){p, function, blocks * t / threads, blocks * (t + 1) / threads, t};
  if (threads == 1) {
    run_share(&shares[0]);
  } else if (GOMP_parallel && omp_get_thread_num && omp_get_num_threads) {
    Team team = {shares, threads};
    GOMP_parallel(run_team_member, &team, (unsigned)threads, 0);
  } else {
    run_with_pthreads(shares, threads);
  }
  return threads;
}

/* ---- the entry points ---- */

static const Kernels* kernels_for(int dtype) {
  return dtype >= 0 && dtype < (int)(sizeof by_dtype / sizeof by_dtype[0]) ? by_dtype[dtype] : NULL;
}

/* Whether `dtype` is built: fp16 needs a compiler with _Float16. */
int ln2d_supports(int dtype) { return kernels_for(dtype) != NULL; }

/* One call's shape, in the kernels' terms: NCHW in blocks of pixels of one image; NHWC as N*H*W
 * rows of C values, in blocks of rows. */
static int run(Problem* p, int dtype, int channels_last, int direction, int threads) {
  const Kernels* k = kernels_for(dtype);
  if (k == NULL) return -1;
  if (channels_last) {
    p->plane *= p->images;
    p->images = 1;
    p->block = BLOCK_VALUES / p->channels > 0 ? BLOCK_VALUES / p->channels : 1;
  } else {
    p->block = BLOCK_VALUES / p->channels;
    if (p->block > MAX_BLOCK) p->block = MAX_BLOCK;
    if (p->block >= 32) p->block -= p->block % 16; /* whole vectors */
    if (p->block < 16) p->block = 16;
  }
  if (p->block > p->plane) p->block = p->plane;
  return run_blocks(p, k->kernel[level()][channels_last != 0][direction], threads);
}

/* mean and rstd are written per pixel, in (N, H, W) order, where given. Returns the number of
 * threads used, or -1 for a dtype this build lacks. */
int ln2d_layernorm2d_forward(int dtype, int channels_last, const void* x, const void* weight,
                             const void* bias, void* y, void* mean, void* rstd, int64_t images,
                             int64_t channels, int64_t plane, double eps, int threads) {
  Problem p = {.x = x, .weight = weight, .bias = bias, .y = y, .mean = mean, .rstd = rstd,
               .images = images, .channels = channels, .plane = plane, .eps = eps};
  return run(&p, dtype, channels_last, FORWARD, threads);
}

/* dweight and dbias are [threads][channels] doubles, zeroed by the caller; row t holds thread
 * t's partial sums. Returns the number of threads used, or -1 for a dtype this build lacks. */
int ln2d_layernorm2d_backward(int dtype, int channels_last, const void* dy, const void* x,
                              const void* mean, const void* rstd, const void* weight, void* dx,
                              double* dweight, double* dbias, int64_t images, int64_t channels,
                              int64_t plane, int threads) {
  Problem p = {.x = x, .dy = dy, .weight = weight, .dx = dx, .mean = (void*)mean,
               .rstd = (void*)rstd, .dweight = dweight, .dbias = dbias, .images = images,
               .channels = channels, .plane = plane};
  return run(&p, dtype, channels_last, BACKWARD, threads);
}
