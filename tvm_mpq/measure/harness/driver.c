/* Generic driver: calls every kernel of the generated case table once and prints one line each:
 *
 *   @@S <i>                                       (before the call: locates a crash)
 *   @@E <kind>: <message>                         (TVM error raised by the kernel, if any)
 *   @@K <i> <name> rc=<rc> instret=<n> cycles=<n> mismatches=<m> first=<flat index or -1>
 *   @@DONE                                        (after the last kernel)
 *
 * instret/cycles are minstret/mcycle deltas around the packed call (call overhead included).
 * Checked outputs are prefilled with the bitwise complement of the expected bytes, so an element
 * the kernel never writes always counts as a mismatch. */
#include <stdint.h>
#include <string.h>
#include <tvm/ffi/c_api.h>
#include "counters.h"
#include "harness.h"

#define MPQ_MAX_ARGS 64

static int64_t check(const mpq_arg_t *a, float rtol, float atol, int64_t *first) {
  const uint8_t *got = (const uint8_t *)a->data, *want = (const uint8_t *)a->expected;
  int64_t bad = 0;
  uint64_t esz = a->bits >= 8 ? a->bits / 8 : 1;
  uint64_t n = a->nbytes / esz;
  for (uint64_t i = 0; i < n; i++) {
    int ok;
    if (a->code == kDLFloat && a->bits == 32) {
      float g, w;
      memcpy(&g, got + 4 * i, 4);
      memcpy(&w, want + 4 * i, 4);
      float d = g - w, aw = w < 0 ? -w : w;
      if (d < 0) d = -d;
      ok = (g != g && w != w) || g == w || d <= atol + rtol * aw;
    } else if (a->code == kDLFloat && a->bits == 64) {
      double g, w;
      memcpy(&g, got + 8 * i, 8);
      memcpy(&w, want + 8 * i, 8);
      double d = g - w, aw = w < 0 ? -w : w;
      if (d < 0) d = -d;
      ok = (g != g && w != w) || g == w || d <= (double)atol + (double)rtol * aw;
    } else {
      ok = memcmp(got + esz * i, want + esz * i, esz) == 0;
    }
    if (!ok && bad++ == 0) *first = (int64_t)i;
  }
  return bad;
}

int main(void) {
  static DLTensor tensors[MPQ_MAX_ARGS];
  static TVMFFIAny args[MPQ_MAX_ARGS];
  mpq_watchdog_arm(mpq_watchdog_ticks);
  for (int32_t c = 0; c < mpq_num_cases; c++) {
    const mpq_case_t *k = &mpq_cases[c];
    for (int32_t i = 0; i < k->nargs; i++) {
      const mpq_arg_t *a = &k->args[i];
      if (a->expected) { /* garbage that can never equal the expected value */
        uint8_t *d = (uint8_t *)a->data;
        const uint8_t *e = (const uint8_t *)a->expected;
        for (uint64_t b = 0; b < a->nbytes; b++) d[b] = (uint8_t)~e[b];
      }
      DLTensor *t = &tensors[i];
      memset(t, 0, sizeof(*t));
      t->data = a->data;
      t->device.device_type = kDLCPU;
      t->device.device_id = 0;
      t->ndim = a->ndim;
      t->dtype.code = a->code;
      t->dtype.bits = a->bits;
      t->dtype.lanes = 1;
      t->shape = (int64_t *)a->shape;
      t->strides = NULL;
      t->byte_offset = 0;
      memset(&args[i], 0, sizeof(args[i]));
      args[i].type_index = kTVMFFIDLTensorPtr;
      args[i].v_ptr = t;
    }
    TVMFFIAny result;
    memset(&result, 0, sizeof(result));
    mpq_ws_reset();
    mpq_puts("@@S ");
    mpq_puti(c);
    mpq_putc('\n');

    uint64_t c0 = rd_mcycle(), i0 = rd_minstret();
    int32_t rc = k->fn(NULL, args, k->nargs, &result);
    uint64_t i1 = rd_minstret(), c1 = rd_mcycle();

    int64_t bad = 0, first = -1;
    for (int32_t i = 0; i < k->nargs; i++)
      if (k->args[i].expected) {
        int64_t f = -1, b = check(&k->args[i], k->rtol, k->atol, &f);
        if (b && first < 0) first = f;
        bad += b;
      }
    mpq_puts("@@K ");
    mpq_puti(c);
    mpq_putc(' ');
    mpq_puts(k->name);
    mpq_puts(" rc=");
    mpq_puti(rc);
    mpq_puts(" instret=");
    mpq_putu(i1 - i0);
    mpq_puts(" cycles=");
    mpq_putu(c1 - c0);
    mpq_puts(" mismatches=");
    mpq_puti(bad);
    mpq_puts(" first=");
    mpq_puti(first);
    mpq_putc('\n');
  }
  mpq_puts("@@DONE\n");
  mpq_flush();
  return 0;
}
