/* The model input of a bare-metal standalone run, linked into the ELF (no file system there).
   MPQ_INPUT_FILE: path of the raw little-endian float32 input; MPQ_WATCHDOG_TICKS: CLINT ticks
   (100 retired instructions each) before the watchdog ends the run. */
#ifndef MPQ_INPUT_FILE
#define MPQ_INPUT_FILE "input.bin"
#endif
#ifndef MPQ_WATCHDOG_TICKS
#define MPQ_WATCHDOG_TICKS 100000000
#endif
  .section .rodata.mpq_input, "a"
  .balign 64
  .globl mpq_input_bin
mpq_input_bin:
  .incbin MPQ_INPUT_FILE
  .globl mpq_input_end
mpq_input_end:
  .balign 8
  .globl mpq_watchdog_ticks
mpq_watchdog_ticks:
  .8byte MPQ_WATCHDOG_TICKS
