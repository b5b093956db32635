/* Platform layer: console output, exit, and the instruction-count watchdog.
 *
 *   default          Spike: HTIF syscall proxy (SYS_write of whole lines; exit via tohost)
 *   -DPLATFORM_VIRT  QEMU -M virt: NS16550 UART0 + SiFive test finisher
 *
 * Both machines have a CLINT at 0x2000000 whose mtime advances once per 100 retired
 * instructions (Spike: INSNS_PER_RTC_TICK; QEMU: -icount shift=0 is 1 ns per instruction
 * with a 10 MHz timebase), so the watchdog fires after the same instruction count on both. */
#include <stddef.h>
#include <stdint.h>
#include "harness.h"

volatile uint64_t tohost __attribute__((section(".tohost"), aligned(64)));
volatile uint64_t fromhost __attribute__((section(".tohost"), aligned(64)));

#if defined(PLATFORM_VIRT)
#define UART0 ((volatile uint8_t *)0x10000000UL)
#define SIFIVE_TEST ((volatile uint32_t *)0x100000UL)

void mpq_con_write(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    while (!(UART0[5] & 0x20)) /* LSR.THRE */
      ;
    UART0[0] = (uint8_t)s[i];
  }
}

void _exit(int code) {
  *SIFIVE_TEST = code == 0 ? 0x5555u : (((uint32_t)code << 16) | 0x3333u);
  for (;;)
    ;
}
#else
/* rv32 cannot store 64 bits at once: write the high word first so the host never
   sees a half-written command (all our commands have a zero high word anyway). */
static void htif_tohost(uint64_t v) {
  while (tohost) {
    if (fromhost) fromhost = 0;
  }
  volatile uint32_t *w = (volatile uint32_t *)&tohost;
  w[1] = (uint32_t)(v >> 32);
  w[0] = (uint32_t)v;
}

static volatile uint64_t magic_mem[8] __attribute__((aligned(64)));

void mpq_con_write(const char *s, size_t n) {
  magic_mem[0] = 64; /* SYS_write */
  magic_mem[1] = 1;  /* stdout */
  magic_mem[2] = (uintptr_t)s;
  magic_mem[3] = n;
  __sync_synchronize();
  htif_tohost((uintptr_t)magic_mem); /* device 0, command 0: syscall proxy */
  while (fromhost == 0)
    ;
  fromhost = 0;
  __sync_synchronize();
}

void _exit(int code) {
  for (;;) htif_tohost(((uint64_t)(uint32_t)code << 1) | 1);
}
#endif

void exit(int code) { _exit(code); }
void abort(void) { _exit(134); }

/* ---- watchdog: machine timer interrupt after `ticks` CLINT ticks (100 instructions each) ---- */
#define CLINT_MTIMECMP ((volatile uint32_t *)0x2004000UL)
#define CLINT_MTIME ((volatile uint32_t *)0x200BFF8UL)

void mpq_watchdog_arm(uint64_t ticks) {
  if (ticks == 0) return;
  uint64_t now = ((uint64_t)CLINT_MTIME[1] << 32) | CLINT_MTIME[0];
  uint64_t when = now + ticks;
  CLINT_MTIMECMP[1] = 0xffffffffu; /* no spurious match while the halves are updated */
  CLINT_MTIMECMP[0] = (uint32_t)when;
  CLINT_MTIMECMP[1] = (uint32_t)(when >> 32);
  __asm__ volatile("csrs mie, %0" ::"r"(1u << 7));     /* MTIE */
  __asm__ volatile("csrs mstatus, %0" ::"r"(1u << 3)); /* MIE */
}

/* ---- minimal console formatting (no stdio: nothing to initialise, tiny on rv32) ---- */
static char linebuf[512];
static size_t linelen;

void mpq_flush(void) {
  if (linelen) mpq_con_write(linebuf, linelen);
  linelen = 0;
}

void mpq_putc(char c) {
  linebuf[linelen++] = c;
  if (c == '\n' || linelen == sizeof(linebuf)) mpq_flush();
}

void mpq_puts(const char *s) {
  while (*s) mpq_putc(*s++);
}

void mpq_putu(uint64_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) mpq_putc(tmp[--n]);
}

void mpq_puti(int64_t v) {
  if (v < 0) {
    mpq_putc('-');
    mpq_putu((uint64_t)0 - (uint64_t)v);
  } else {
    mpq_putu((uint64_t)v);
  }
}

void mpq_putx(uint64_t v) {
  mpq_puts("0x");
  for (int s = 60; s >= 0; s -= 4) mpq_putc("0123456789abcdef"[(v >> s) & 15]);
}

/* Called from crt0 for every trap. The watchdog interrupt and real exceptions are told apart
   so the host can report "timeout" vs "run_error". */
void mpq_trap_handler(uintptr_t mcause, uintptr_t mepc, uintptr_t mtval) {
  const uintptr_t irq = (uintptr_t)1 << (sizeof(uintptr_t) * 8 - 1);
  if (mcause == (irq | 7)) {
    mpq_puts("\n@@WATCHDOG\n");
    _exit(MPQ_EXIT_WATCHDOG);
  }
  mpq_puts("\n@@TRAP mcause=");
  mpq_putx(mcause);
  mpq_puts(" mepc=");
  mpq_putx(mepc);
  mpq_puts(" mtval=");
  mpq_putx(mtval);
  mpq_putc('\n');
  _exit(MPQ_EXIT_TRAP);
}
