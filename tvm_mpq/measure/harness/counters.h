/* Machine-mode performance counters (M-mode CSRs, readable on Spike and QEMU).
   On rv32 the 64-bit counters are read as hi/lo/hi so a carry between the two
   halves cannot produce a torn value. */
#pragma once
#include <stdint.h>

#if __riscv_xlen == 64
static inline uint64_t rd_mcycle(void) {
  uint64_t v;
  __asm__ volatile("csrr %0, mcycle" : "=r"(v)::"memory");
  return v;
}
static inline uint64_t rd_minstret(void) {
  uint64_t v;
  __asm__ volatile("csrr %0, minstret" : "=r"(v)::"memory");
  return v;
}
#else
#define MPQ_RD64(lo, hi)                                   \
  do {                                                     \
    uint32_t h0, l, h1;                                    \
    do {                                                   \
      __asm__ volatile("csrr %0, " #hi : "=r"(h0)::"memory"); \
      __asm__ volatile("csrr %0, " #lo : "=r"(l)::"memory");  \
      __asm__ volatile("csrr %0, " #hi : "=r"(h1)::"memory"); \
    } while (h0 != h1);                                    \
    return ((uint64_t)h1 << 32) | l;                       \
  } while (0)
static inline uint64_t rd_mcycle(void) { MPQ_RD64(mcycle, mcycleh); }
static inline uint64_t rd_minstret(void) { MPQ_RD64(minstret, minstreth); }
#endif
