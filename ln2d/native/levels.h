/* x86-64 levels for ln2d's native kernels: every hot function is compiled once per level, and
 * a table picks which one runs. By default that is the widest this CPU has (AVX-512 on a server,
 * AVX2 on most laptops and AMD EPYCs, SSE2 elsewhere); LN2D_NATIVE_LEVEL, or ln2d_set_level,
 * picks a narrower one, so that each clone can be tested against the reference on a machine
 * that has them all. A level the CPU lacks is never used: it would fault.
 *
 * Included by each library, which then has its own copy of the choice.
 */
#ifndef LN2D_LEVELS_H
#define LN2D_LEVELS_H

#include <stdlib.h>
#include <string.h>

enum { LEVEL_DEFAULT, LEVEL_V3, LEVEL_V4, LEVELS };
static const char* const level_names[LEVELS] = {"default", "x86-64-v3", "x86-64-v4"};

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* PER_LEVEL(DEFINE, name, ...) defines name_v4, name_v3 and name_default through
 * DEFINE(function name, attributes, ...); AT_V3(name) and AT_V4(name) name a level's clone. */
#define PER_LEVEL(define, name, ...)                                         \
  define(name##_v4, __attribute__((target("arch=x86-64-v4"))), __VA_ARGS__) \
  define(name##_v3, __attribute__((target("arch=x86-64-v3"))), __VA_ARGS__) \
  define(name##_default, , __VA_ARGS__)
#define AT_V3(name) name##_v3
#define AT_V4(name) name##_v4

/* Feature by feature, not __builtin_cpu_supports("x86-64-v4"): older compilers lack the
 * level names. */
static int cpu_has_level(int level) {
  __builtin_cpu_init();
  int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("bmi2");
  int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd");
  return level == LEVEL_DEFAULT || (level == LEVEL_V3 && v3) || (level == LEVEL_V4 && v4);
}
#else /* another architecture or compiler: one portable build */
#define PER_LEVEL(define, name, ...) define(name##_default, , __VA_ARGS__)
#define AT_V3(name) name##_default
#define AT_V4(name) name##_default
static int cpu_has_level(int level) { return level == LEVEL_DEFAULT; }
#endif

#define AT_DEFAULT(name) name##_default
/* A function's clones, by level. */
#define LEVEL_TABLE(name) {AT_DEFAULT(name), AT_V3(name), AT_V4(name)}

static int widest_level(void) {
  int level = LEVEL_V4;
  while (!cpu_has_level(level)) level--;
  return level;
}

static int current_level = -1; /* chosen on first use */

/* Use the level named `name` ("default", "x86-64-v3", "x86-64-v4", or "" for the widest).
 * Returns 0, or -1 (and changes nothing) for an unknown name or a level this CPU lacks. */
int ln2d_set_level(const char* name) {
  if (name == NULL || name[0] == '\0') {
    current_level = widest_level();
    return 0;
  }
  for (int level = 0; level < LEVELS; level++)
    if (strcmp(name, level_names[level]) == 0 && cpu_has_level(level)) {
      current_level = level;
      return 0;
    }
  return -1;
}

/* The level in use: LN2D_NATIVE_LEVEL's where it names one this CPU has, else the widest. */
static int level(void) {
  if (current_level < 0 && ln2d_set_level(getenv("LN2D_NATIVE_LEVEL")) != 0)
    current_level = widest_level();
  return current_level;
}

const char* ln2d_level(void) { return level_names[level()]; }

/* Whether this CPU can run the level named `name`. */
int ln2d_cpu_has_level(const char* name) {
  for (int level = 0; level < LEVELS; level++)
    if (strcmp(name, level_names[level]) == 0) return cpu_has_level(level);
  return 0;
}

#endif
