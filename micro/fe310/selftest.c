/*
 * Self-test of the FE310 platform layer, run under QEMU by
 * tests/test_fe310_platform.py. Prints fixed lines, a printf-formatted
 * number, the instruction count of a loop of known length, the stack
 * high-water mark, then exits with code 3 through exit().
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "perf.h"
#include "uart.h"

/* The loop runs 1 + 2 * SELFTEST_LOOP_N instructions (li, then addi + bnez). */
#define SELFTEST_LOOP_N 1000
#define SELFTEST_STACK_BUF 600

static void known_loop(void) {
  __asm__ volatile(
      "  li t0, %0\n"
      "1: addi t0, t0, -1\n"
      "  bnez t0, 1b\n" ::"i"(SELFTEST_LOOP_N)
      : "t0");
}

/* noinline: the buffer must live in this frame, below main's. */
__attribute__((noinline)) static uint32_t use_stack(void) {
  volatile uint8_t buf[SELFTEST_STACK_BUF];
  for (int i = 0; i < SELFTEST_STACK_BUF; ++i) buf[i] = (uint8_t)i;
  uint32_t sum = 0;
  for (int i = 0; i < SELFTEST_STACK_BUF; ++i) sum += buf[i];
  return sum;
}

int main(void) {
  tflq_uart_puts("tflq fe310 selftest\n");
  printf("printf: %d %s 0x%x\n", -12345, "ok", 0xBEEFu);

  uint64_t i0 = tflq_read_minstret();
  known_loop();
  uint64_t i1 = tflq_read_minstret();
  uint64_t c0 = tflq_read_mcycle();
  known_loop();
  uint64_t c1 = tflq_read_mcycle();
  printf("loop_n=%d loop_instret=%lu loop_cycles=%lu\n", SELFTEST_LOOP_N,
         (unsigned long)(i1 - i0), (unsigned long)(c1 - c0));

  printf("stack_sum=%lu\n", (unsigned long)use_stack());
  printf("stack_bytes=%lu stack_size=%lu\n",
         (unsigned long)tflq_stack_high_water(),
         (unsigned long)tflq_stack_size());

  tflq_uart_puts("selftest done\n");
  exit(3);
}
