/*
 * Boot, exit and trap handling for the SiFive FE310.
 *
 * picolibc's crt0 (--crt0=hosted) sets sp/gp, copies .data, clears .bss,
 * runs constructors, calls main() and then exit(), which ends in _exit()
 * below. Build with -DTFLQ_SEMIHOSTING=1 for QEMU: _exit() then ends the
 * emulator with main's return code. Without it (real silicon, no debugger
 * attached) a semihosting ebreak would trap, so _exit() parks the core.
 */
#include "fe310.h"

#include <stdint.h>
#include <unistd.h>

#include "perf.h"
#include "uart.h"

#define PRCI_BASE 0x10008000u
#define PRCI_HFROSCCFG 0x00u
#define PRCI_HFXOSCCFG 0x04u
#define PRCI_PLLCFG 0x08u
#define PRCI_PLLOUTDIV 0x0Cu
#define PRCI_OSC_EN (1u << 30)
#define PRCI_OSC_READY (1u << 31)
#define PLLCFG_SEL (1u << 16)
#define PLLCFG_REFSEL (1u << 17)
#define PLLCFG_BYPASS (1u << 18)
#define PLLOUTDIV_BY1 (1u << 8)

static inline volatile uint32_t *prci(uint32_t offset) {
  return (volatile uint32_t *)(uintptr_t)(PRCI_BASE + offset);
}

/*
 * hfclk = 16 MHz crystal with the PLL bypassed, whatever the bootloader
 * left: out of reset it is the ~13.8 MHz ring oscillator, which would put
 * the UART at ~99 kbaud. hfclk runs from the ring oscillator while the PLL
 * mux is reconfigured. hfclk never exceeds 16 MHz here, so the SPI clock
 * of the flash we execute from (a division of it) stays slow enough
 * whatever divisor the bootloader set.
 */
static void fe310_clock_init(void) {
  *prci(PRCI_HFROSCCFG) |= PRCI_OSC_EN;
  while (!(*prci(PRCI_HFROSCCFG) & PRCI_OSC_READY)) {
  }
  *prci(PRCI_PLLCFG) &= ~PLLCFG_SEL;
  *prci(PRCI_HFXOSCCFG) |= PRCI_OSC_EN;
  while (!(*prci(PRCI_HFXOSCCFG) & PRCI_OSC_READY)) {
  }
  *prci(PRCI_PLLCFG) |= PLLCFG_REFSEL | PLLCFG_BYPASS;
  *prci(PRCI_PLLOUTDIV) = PLLOUTDIV_BY1;
  *prci(PRCI_PLLCFG) |= PLLCFG_SEL;
}

/*
 * Trap entry (mtvec, direct mode): nothing here returns, so no registers
 * are saved. sp is reloaded first because the likeliest trap is a stack
 * overflow, which leaves sp below the start of RAM.
 */
__asm__(
    ".pushsection .text.tflq_trap_entry,\"ax\",@progbits\n"
    ".balign 4\n"
    ".option push\n"
    ".option arch, +zicsr\n"
    "tflq_trap_entry:\n"
    "  la sp, __stack\n"
    "  csrr a0, mcause\n"
    "  csrr a1, mepc\n"
    "  csrr a2, mtval\n"
    "  j tflq_trap\n"
    ".option pop\n"
    ".popsection\n");
void tflq_trap_entry(void);

static void put_hex(uint32_t v) {
  for (int shift = 28; shift >= 0; shift -= 4) {
    tflq_uart_putc("0123456789abcdef"[(v >> shift) & 0xF]);
  }
}

/* Reports the trap with the UART alone: stdio may be what faulted. */
__attribute__((noreturn, used)) void tflq_trap(uint32_t mcause, uint32_t mepc,
                                              uint32_t mtval) {
  tflq_uart_puts("\ntflq: trap mcause=0x");
  put_hex(mcause);
  tflq_uart_puts(" mepc=0x");
  put_hex(mepc);
  tflq_uart_puts(" mtval=0x");
  put_hex(mtval);
  tflq_uart_putc('\n');
  _exit(TFLQ_EXIT_TRAP);
  __builtin_unreachable();
}

void tflq_fe310_init(void) {
  /* Once only: switching the clock again could garble bytes still in the
   * UART FIFO. */
  static int done;
  if (done) return;
  done = 1;
  fe310_clock_init();
  tflq_uart_init();
  __asm__ volatile(".option push\n.option arch, +zicsr\n"
                   "csrw mtvec, %0\n.option pop" ::"r"(tflq_trap_entry));
}

/* Priority 101 = first user constructor: C++ static constructors may print. */
__attribute__((constructor(101))) static void fe310_boot(void) {
  tflq_fe310_init();
  tflq_stack_paint();
}

#if defined(TFLQ_SEMIHOSTING) && TFLQ_SEMIHOSTING
/*
 * RISC-V semihosting call: QEMU recognises ebreak as a host request only
 * between these two uncompressed marker instructions, all on one page
 * (hence the 16-byte alignment and norvc).
 */
__asm__(
    ".pushsection .text.tflq_semihost,\"ax\",@progbits\n"
    ".balign 16\n"
    ".option push\n"
    ".option norvc\n"
    "tflq_semihost:\n"
    "  slli x0, x0, 0x1f\n"
    "  ebreak\n"
    "  srai x0, x0, 7\n"
    "  ret\n"
    ".option pop\n"
    ".popsection\n");
long tflq_semihost(long op, void *arg);

#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

/*
 * On rv32 plain SYS_EXIT (0x18) carries no exit code (QEMU turns it into
 * 0 or 1); SYS_EXIT_EXTENDED passes {reason, code}, so use it.
 */
void _exit(int code) {
  uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)code};
  tflq_semihost(SYS_EXIT_EXTENDED, block);
  for (;;) {
  }
}
#else
/* Interrupts off, then sleep forever: the program has ended. */
void _exit(int code) {
  (void)code;
  __asm__ volatile(".option push\n.option arch, +zicsr\n"
                   "csrci mstatus, 8\n.option pop");
  for (;;) {
    __asm__ volatile("wfi");
  }
}
#endif
