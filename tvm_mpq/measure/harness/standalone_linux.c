/* Hosted (Linux, static) driver of a standalone model (tvm_mpq.deploy.standalone), plus the few TVM
 * runtime symbols the kernel object references, implemented on libc.
 *
 *   model_linux INPUT.bin [OUTPUT.bin]
 *
 * INPUT.bin: raw little-endian float32 input. The output is written raw to OUTPUT.bin, or else
 * printed as "@@O <first index> <hex32> ..." lines (bit-exact). Exit status: 0 ok, 1 usage/IO,
 * 2 wrong input size, 3 a kernel returned an error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>
#include "model.h"

/* ---- TVM runtime stand-ins ---- */
/* Workspace: the bare-metal bump allocator (tvm_rt_stubs.c) over the region model.c reserves
   for the kernels' workspaces at the start of its arena ([__ws_start, __ws_end)). */
extern uint8_t __ws_start[], __ws_end[];
static uintptr_t ws_top;

void *TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint) {
  (void)device_type, (void)device_id, (void)dtype_code_hint, (void)dtype_bits_hint;
  uintptr_t p = (ws_top + 63) & ~(uintptr_t)63;
  if (nbytes > (uint64_t)(__ws_end - __ws_start) - p) {
    fputs("@@E workspace arena exhausted\n", stderr);
    return NULL;
  }
  ws_top = p + (uintptr_t)nbytes;
  return __ws_start + p;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void *ptr) {
  (void)device_type, (void)device_id;
  uintptr_t off = (uintptr_t)((uint8_t *)ptr - __ws_start);
  if (off < ws_top) ws_top = off;
  return 0;
}

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

void *(*__TVMBackendAllocWorkspace)(int, int, uint64_t, int, int) = TVMBackendAllocWorkspace;
int (*__TVMBackendFreeWorkspace)(int, int, void *) = TVMBackendFreeWorkspace;
int (*__TVMBackendParallelLaunch)(FTVMParallelLambda, void *, int) = TVMBackendParallelLaunch;
int (*__TVMBackendParallelBarrier)(int, TVMParallelGroupEnv *) = TVMBackendParallelBarrier;

void TVMFFIErrorSetRaisedFromCStrParts(const char *kind, const char **parts, int32_t num_parts) {
  fprintf(stderr, "@@E %s: ", kind ? kind : "Error");
  for (int32_t i = 0; i < num_parts; i++)
    if (parts[i]) fputs(parts[i], stderr);
  fputc('\n', stderr);
}

void TVMFFIErrorSetRaisedFromCStr(const char *kind, const char *message) {
  const char *parts[1] = {message};
  TVMFFIErrorSetRaisedFromCStrParts(kind, parts, 1);
}

void TVMAPISetLastError(const char *msg) { TVMFFIErrorSetRaisedFromCStr("Error", msg); }

/* ---- driver ---- */
int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s INPUT.bin [OUTPUT.bin]\n", argv[0]);
    return 1;
  }
  float *in = aligned_alloc(64, (MPQ_INPUT_BYTES + 63) & ~(size_t)63);
  float *out = aligned_alloc(64, (MPQ_OUTPUT_BYTES + 63) & ~(size_t)63);
  FILE *f = fopen(argv[1], "rb");
  if (!in || !out || !f) {
    fprintf(stderr, "cannot read %s\n", argv[1]);
    return 1;
  }
  size_t n = fread(in, 1, MPQ_INPUT_BYTES, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (n != MPQ_INPUT_BYTES || extra) {
    fprintf(stderr, "@@E input must be %u bytes\n", (unsigned)MPQ_INPUT_BYTES);
    return 2;
  }
  int32_t rc = mpq_model_run(in, out);
  printf("@@R rc=%d\n", (int)rc);
  if (rc != 0) return 3;
  if (argc == 3) {
    FILE *o = fopen(argv[2], "wb");
    if (!o || fwrite(out, 1, MPQ_OUTPUT_BYTES, o) != MPQ_OUTPUT_BYTES || fclose(o) != 0) {
      fprintf(stderr, "cannot write %s\n", argv[2]);
      return 1;
    }
  } else {
    for (uint32_t i = 0; i < MPQ_OUTPUT_SIZE; i += 8) {
      printf("@@O %u", (unsigned)i);
      for (uint32_t j = i; j < i + 8 && j < MPQ_OUTPUT_SIZE; j++) {
        uint32_t bits;
        memcpy(&bits, &out[j], 4);
        printf(" %08x", (unsigned)bits);
      }
      putchar('\n');
    }
  }
  printf("@@DONE\n");
  return 0;
}
