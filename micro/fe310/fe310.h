/* Boot, exit and trap handling for the SiFive FE310 (plain C). */
#ifndef TFLQ_FE310_FE310_H_
#define TFLQ_FE310_FE310_H_

#ifdef __cplusplus
extern "C" {
#endif

/* Core clock after tflq_fe310_init(): the HiFive1's 16 MHz crystal, PLL bypassed. */
#define TFLQ_HFCLK_HZ 16000000u

/* Exit code after an unexpected trap (illegal instruction, stack overflow...). */
#define TFLQ_EXIT_TRAP 70

/*
 * Selects the 16 MHz crystal, routes the UART, installs the trap handler and
 * paints the stack. Runs automatically as the first constructor, before
 * main(); later calls do nothing.
 */
void tflq_fe310_init(void);

#ifdef __cplusplus
}
#endif

#endif
