/* Bare-metal stand-ins for the few TVM runtime symbols a TVM 0.27 LLVM object references. */
#include <stdint.h>
#include "harness.h"

/* ---- workspace: bump allocator over the arena the link script leaves above .noinit ---- */
extern uint8_t __ws_start[], __ws_end[];
static uintptr_t ws_top; /* offset of the first free byte */

void mpq_ws_reset(void) { ws_top = 0; }

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
  uintptr_t p = (ws_top + 63) & ~(uintptr_t)63;
  if (nbytes > (uint64_t)(__ws_end - __ws_start) - p) {
    mpq_puts("@@E workspace arena exhausted\n");
    return NULL; /* the kernel then returns -1 */
  }
  ws_top = p + (uintptr_t)nbytes;
  return __ws_start + p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type, (void)device_id;
  /* Frees come in LIFO order from TVM codegen; anything else just stays until the next reset. */
  uintptr_t off = (uintptr_t)((uint8_t *)ptr - __ws_start);
  if (off < ws_top) ws_top = off;
  return 0;
}

/* ---- parallel loops run serially on one hart ---- */
typedef struct {
  void *sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv *penv, void *cdata);

int TVMBackendParallelLaunch(FTVMParallelLambda flambda, void *cdata, int num_task) {
  (void)num_task;
  TVMParallelGroupEnv env = {0, 1};
  return flambda(0, &env, cdata);
}

int TVMBackendParallelBarrier(int task_id, TVMParallelGroupEnv *penv) {
  (void)task_id, (void)penv;
  return 0;
}

/* TVM codegen calls the backend through these weak, null-initialised pointers in the kernel
   object; these strong definitions win at link time. */
void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = TVMBackendAllocWorkspace;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = TVMBackendFreeWorkspace;
int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void *, int) = TVMBackendParallelLaunch;
int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv *) = TVMBackendParallelBarrier;

/* ---- errors raised by the packed wrapper's argument checks: one "@@E" line each ---- */
static void put_oneline(const char *s) {
  for (; *s; s++) mpq_putc(*s == '\n' ? ' ' : *s);
}

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts) {
  mpq_puts("@@E ");
  put_oneline(kind ? kind : "Error");
  mpq_puts(": ");
  for (int32_t i = 0; i < num_parts; i++)
    if (parts[i]) put_oneline(parts[i]);
  mpq_putc('\n');
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {
  const char *parts[1] = {message};
  TVMFFIErrorSetRaisedFromCStrParts(kind, parts, 1);
}

void TVMAPISetLastError(const char *msg) { TVMFFIErrorSetRaisedFromCStr("Error", msg); }

/* LLVM lowers llvm.roundeven (our activation quantizer's round-half-to-even) to a roundevenf
   libcall on soft-float targets (rv32imc); picolibc 1.8 does not provide it. The default
   floating-point rounding mode is round-to-nearest-even, so nearbyintf is the same function.
   -DMPQ_NO_FLOAT_SHIMS (a standalone model whose kernels call no roundevenf, e.g. integer-only
   with integer IO) leaves it out: this object then references no float function at all. */
#ifndef MPQ_NO_FLOAT_SHIMS
#include <math.h>
__attribute__((weak)) float roundevenf(float x) { return nearbyintf(x); }
#endif
