/* M-mode start-up for the tvm-mpq bare-metal harness (Spike, QEMU -M virt/-M spike).
   Hart 0 runs; any other hart parks. Works for rv32 and rv64. */
#if __riscv_xlen == 64
#define STORE sd
#define LOAD ld
#define WORD 8
#else
#define STORE sw
#define LOAD lw
#define WORD 4
#endif

  .section .text.init, "ax"
  .globl _start
_start:
  csrr  t0, mhartid
  bnez  t0, mpq_park
  .option push
  .option norelax
  la    gp, __global_pointer$
  .option pop
  la    sp, _stack_top
  la    tp, __tls_base          /* picolibc keeps errno in TLS (local-exec) */
  la    t0, mpq_trap_entry
  csrw  mtvec, t0
  /* mstatus.FS = Initial, mstatus.VS = Initial: WARL, ignored where F/V are absent */
  li    t0, (1 << 13) | (1 << 9)
  csrs  mstatus, t0
#ifdef __riscv_flen
  csrwi fcsr, 0
#endif
#ifdef MPQ_COPY_DATA
  /* board layout (link_board.ld): copy .data and .tdata from their load image in flash */
  la    t0, __data_lma
  la    t1, __data_start
  la    t2, __data_end
3:
  bgeu  t1, t2, 4f
  LOAD  t3, 0(t0)
  STORE t3, 0(t1)
  addi  t0, t0, WORD
  addi  t1, t1, WORD
  j     3b
4:
#endif
  /* zero .tbss .. .bss (word aligned by the link script) */
  la    t0, __tbss_start
  la    t1, __bss_end
1:
  bgeu  t0, t1, 2f
  STORE zero, 0(t0)
  addi  t0, t0, WORD
  j     1b
2:
  call  main
  call  _exit                   /* never returns */

  .globl mpq_park
mpq_park:
  wfi
  j     mpq_park

  /* Every trap (exception, or the watchdog timer interrupt) ends the program. */
  .align 4
mpq_trap_entry:
  csrr  a0, mcause
  csrr  a1, mepc
  csrr  a2, mtval
  la    sp, _stack_top
  call  mpq_trap_handler
  j     mpq_park
