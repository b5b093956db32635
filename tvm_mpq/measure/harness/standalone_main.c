/* Bare-metal driver of a standalone model (tvm_mpq.deploy.standalone): runs mpq_model_run once on the
 * input linked into the ELF (standalone_input.S) and prints
 *
 *   @@R rc=<rc> instret=<n> cycles=<n>     minstret/mcycle deltas around mpq_model_run
 *   @@M stack=<n> model_stack=<n> stack_size=<n>
 *                                           stack high-water mark in bytes: of the program
 *                                           (from the stack top) and of mpq_model_run alone
 *                                           (below main's frame); the stack region's size
 *   @@P <op index> <instret>                per op, when built with -DMPQ_PROFILE_OPS
 *   @@O <first index> <hex32> ...           the output elements, bit-exact, 8 per line: a
 *                                           float's bits, or an integer code zero-extended
 *   @@DONE
 *
 * The element types come from model.h (mpq_input_t, mpq_output_t): float for a float model,
 * uint8_t codes for an integer_io one. No float arithmetic here: an integer_io ELF links no
 * soft-float routine.
 *
 * Links with crt0.S, htif.c and tvm_rt_stubs.c of the measurement harness (not driver.c). */
#include <stdint.h>
#include <string.h>
#include "counters.h"
#include "harness.h"
#include "model.h"

extern const uint8_t mpq_input_bin[], mpq_input_end[];
extern uintptr_t __stack_bottom[], _stack_top[]; /* the stack region (link.ld, link_board.ld) */

/* Stack high-water mark: the stack region below the caller's frame is painted with a pattern
   before mpq_model_run and scanned from the bottom after it; the deepest word written is the
   mark. (A word written with the pattern itself, or a frame reserved but never written below
   the deepest write, are not seen.) Both run outside the counted region. */
#define MPQ_STACK_PAINT ((uintptr_t)0xa5c3a5c3a5c3a5c3ull)

static uintptr_t __attribute__((noinline)) stack_paint(void) {
  uintptr_t sp;
  __asm__ volatile("mv %0, sp" : "=r"(sp));
  volatile uintptr_t *p = (volatile uintptr_t *)__stack_bottom;
  while ((uintptr_t)p + 64 < sp) *p++ = MPQ_STACK_PAINT; /* 64 bytes below sp stay untouched */
  return sp;
}

static uintptr_t __attribute__((noinline)) stack_deepest(void) {
  const volatile uintptr_t *p = (const volatile uintptr_t *)__stack_bottom;
  while (p < (const volatile uintptr_t *)_stack_top && *p == MPQ_STACK_PAINT) p++;
  return (uintptr_t)p;
}

/* the caller's output buffer: aligned like every other tensor the kernels see */
static mpq_output_t output[MPQ_OUTPUT_SIZE] __attribute__((aligned(64)));

static void put_hex32(uint32_t v) {
  for (int s = 28; s >= 0; s -= 4) mpq_putc("0123456789abcdef"[(v >> s) & 15]);
}

int main(void) {
  mpq_watchdog_arm(mpq_watchdog_ticks);
  if ((uint64_t)(mpq_input_end - mpq_input_bin) != (uint64_t)MPQ_INPUT_BYTES) {
    mpq_puts("@@E input is ");
    mpq_putu((uint64_t)(mpq_input_end - mpq_input_bin));
    mpq_puts(" bytes, the model expects ");
    mpq_putu((uint64_t)MPQ_INPUT_BYTES);
    mpq_putc('\n');
    mpq_flush();
    return 2;
  }
  mpq_ws_reset();
  uintptr_t sp = stack_paint(); /* main's frame ends at most here */
  uint64_t c0 = rd_mcycle(), i0 = rd_minstret();
  int32_t rc = mpq_model_run((const mpq_input_t *)mpq_input_bin, output);
  uint64_t i1 = rd_minstret(), c1 = rd_mcycle();
  uintptr_t deepest = stack_deepest();
  mpq_puts("@@R rc=");
  mpq_puti(rc);
  mpq_puts(" instret=");
  mpq_putu(i1 - i0);
  mpq_puts(" cycles=");
  mpq_putu(c1 - c0);
  mpq_puts("\n@@M stack=");
  mpq_putu((uint64_t)((uintptr_t)_stack_top - deepest));
  mpq_puts(" model_stack=");
  mpq_putu((uint64_t)(deepest < sp ? sp - deepest : 0));
  mpq_puts(" stack_size=");
  mpq_putu((uint64_t)((uintptr_t)_stack_top - (uintptr_t)__stack_bottom));
  mpq_putc('\n');
#ifdef MPQ_PROFILE_OPS
  for (uint32_t i = 0; i < MPQ_NUM_OPS; i++) {
    mpq_puts("@@P ");
    mpq_putu(i);
    mpq_putc(' ');
    mpq_putu(mpq_op_instret[i]);
    mpq_putc('\n');
  }
#endif
  for (uint32_t i = 0; i < MPQ_OUTPUT_SIZE; i += 8) {
    mpq_puts("@@O ");
    mpq_putu(i);
    for (uint32_t j = i; j < i + 8 && j < MPQ_OUTPUT_SIZE; j++) {
      uint32_t bits = 0; /* little endian: a narrower element is zero-extended */
      memcpy(&bits, &output[j], sizeof(mpq_output_t));
      mpq_putc(' ');
      put_hex32(bits);
    }
    mpq_putc('\n');
  }
  mpq_puts("@@DONE\n");
  mpq_flush();
  return 0;
}
