/* Hosted (Linux, static) driver of a standalone model (tvm_mpq.deploy). It links with the
 * bare-metal build's TVM runtime stand-ins (tvm_rt_stubs.c) and gives them a console on stderr.
 *
 *   model_linux INPUT.bin [OUTPUT.bin]
 *
 * INPUT.bin: the raw little-endian input (model.h: mpq_input_t, float32 or uint8 codes). The
 * output is written raw to OUTPUT.bin, or else printed as "@@O <first index> <hex32> ..." lines
 * (bit-exact; a code zero-extended). Exit status: 0 ok, 1 usage/IO,
 * 2 wrong input size, 3 a kernel returned an error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "harness.h"
#include "model.h"

/* ---- console of the shared TVM runtime stand-ins (tvm_rt_stubs.c: workspace allocator over
   the region model.c reserves in its arena, serial parallel loops, "@@E" error lines) ---- */
void mpq_putc(char c) { fputc(c, stderr); }
void mpq_puts(const char *s) { fputs(s, stderr); }

/* ---- driver ---- */
int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s INPUT.bin [OUTPUT.bin]\n", argv[0]);
    return 1;
  }
  mpq_input_t *in = aligned_alloc(64, (MPQ_INPUT_BYTES + 63) & ~(size_t)63);
  mpq_output_t *out = aligned_alloc(64, (MPQ_OUTPUT_BYTES + 63) & ~(size_t)63);
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
        uint32_t bits = 0; /* little endian: a narrower element is zero-extended */
        memcpy(&bits, &out[j], sizeof(mpq_output_t));
        printf(" %08x", (unsigned)bits);
      }
      putchar('\n');
    }
  }
  printf("@@DONE\n");
  return 0;
}
