/*
 * Instruction/cycle counters and stack high-water measurement (plain C).
 *
 * Under QEMU with "-icount shift=0", minstret and mcycle both count retired
 * instructions exactly; without -icount they return host time. On silicon
 * mcycle counts core clocks (flash wait states included), minstret counts
 * instructions.
 */
#ifndef TFLQ_FE310_PERF_H_
#define TFLQ_FE310_PERF_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The 64-bit counters are two CSRs on rv32: read high, low, high and retry
 * if a carry reached the high half in between.
 * binutils 2.40 needs Zicsr enabled for csrr; -march stays rv32imac so gcc
 * still picks the rv32imac/ilp32 multilib.
 */
#define TFLQ_CSRR(csr, out)                                             \
  __asm__ volatile(".option push\n.option arch, +zicsr\ncsrr %0, " csr \
                   "\n.option pop"                                      \
                   : "=r"(out))

static inline uint64_t tflq_read_minstret(void) {
  uint32_t hi, lo, hi2;
  do {
    TFLQ_CSRR("minstreth", hi);
    TFLQ_CSRR("minstret", lo);
    TFLQ_CSRR("minstreth", hi2);
  } while (hi != hi2);
  return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t tflq_read_mcycle(void) {
  uint32_t hi, lo, hi2;
  do {
    TFLQ_CSRR("mcycleh", hi);
    TFLQ_CSRR("mcycle", lo);
    TFLQ_CSRR("mcycleh", hi2);
  } while (hi != hi2);
  return ((uint64_t)hi << 32) | lo;
}

/* One csrr: enough for intervals under 2^32 counts. */
static inline uint32_t tflq_read_minstret32(void) {
  uint32_t v;
  TFLQ_CSRR("minstret", v);
  return v;
}

static inline uint32_t tflq_read_mcycle32(void) {
  uint32_t v;
  TFLQ_CSRR("mcycle", v);
  return v;
}

/*
 * Brackets a region whose data loads from SPI flash micro/qemu/flash_reads.c (a QEMU
 * plugin) counts: TFLQ_FLASH_WINDOW(1) opens it, TFLQ_FLASH_WINDOW(0) closes it. The
 * value is the immediate of `csrwi mscratch`, which nothing else here uses; one
 * instruction each, so place them outside a minstret interval.
 */
#define TFLQ_FLASH_WINDOW(open)                                             \
  __asm__ volatile(".option push\n.option arch, +zicsr\ncsrwi mscratch, " #open \
                   "\n.option pop" ::: "memory")

/* Stack region from the linker script (fe310_sections.ld). */
extern uint32_t __tflq_stack_bottom[];
extern uint32_t __stack[];

#define TFLQ_STACK_PAINT 0x5AC3A55Cu

/*
 * Fills the stack below the current stack pointer with TFLQ_STACK_PAINT.
 * Runs at boot (fe310.c); call it again right before a region to measure
 * that region alone. Everything above the caller's frame counts as used.
 * The volatile stores keep gcc from turning the loop into a memset call,
 * whose own frame would land in the area being painted.
 */
static inline void tflq_stack_paint(void) {
  uint32_t *sp;
  __asm__ volatile("mv %0, sp" : "=r"(sp));
  for (volatile uint32_t *p = __tflq_stack_bottom; p < sp; ++p) {
    *p = TFLQ_STACK_PAINT;
  }
}

/*
 * Bytes of stack used since the last paint: from the top of the stack down
 * to the deepest word that no longer holds the paint. Assumes the deepest
 * word written did not happen to be written with the paint value itself.
 */
static inline size_t tflq_stack_high_water(void) {
  const uint32_t *p = __tflq_stack_bottom;
  while (p < __stack && *p == TFLQ_STACK_PAINT) ++p;
  return (size_t)((const char *)__stack - (const char *)p);
}

static inline size_t tflq_stack_size(void) {
  return (size_t)((const char *)__stack - (const char *)__tflq_stack_bottom);
}

#ifdef __cplusplus
}
#endif

#endif
