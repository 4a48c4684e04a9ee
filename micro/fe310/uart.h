/* UART0 of the SiFive FE310 (0x10013000): polled output, 115200 8N1. */
#ifndef TFLQ_FE310_UART_H_
#define TFLQ_FE310_UART_H_

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Routes UART0 to GPIO 16/17 (the HiFive1's USB serial bridge) and sets
 * 115200 baud, assuming hfclk = 16 MHz (fe310_clock_init() selects the
 * HiFive1's 16 MHz crystal). Runs at boot from fe310.c; safe to repeat.
 */
void tflq_uart_init(void);

/* Blocks while the 8-entry transmit FIFO is full. No '\n' -> "\r\n". */
void tflq_uart_putc(char c);

void tflq_uart_puts(const char *s);

#ifdef __cplusplus
}
#endif

#endif
