#include "uart.h"

#include <stdint.h>
#include <stdio.h>

#include "fe310.h"

#define UART0_BASE 0x10013000u
#define UART_TXDATA 0x00u
#define UART_TXCTRL 0x08u
#define UART_DIV 0x18u
#define UART_TXDATA_FULL 0x80000000u
#define UART_TXCTRL_TXEN 0x1u

#define GPIO_BASE 0x10012000u
#define GPIO_IOF_EN 0x38u
#define GPIO_IOF_SEL 0x3Cu
#define GPIO_UART0_PINS ((1u << 16) | (1u << 17)) /* RX 16, TX 17 */

/* baud = hfclk / (div + 1): 16 MHz / 139 = 115108, 0.08% off 115200. */
#define TFLQ_BAUD 115200u

static inline volatile uint32_t *reg(uint32_t base, uint32_t offset) {
  return (volatile uint32_t *)(uintptr_t)(base + offset);
}

void tflq_uart_init(void) {
  /* IOF0 of pins 16/17 is UART0; without it the pins stay plain GPIO. */
  *reg(GPIO_BASE, GPIO_IOF_SEL) &= ~GPIO_UART0_PINS;
  *reg(GPIO_BASE, GPIO_IOF_EN) |= GPIO_UART0_PINS;
  *reg(UART0_BASE, UART_DIV) = (TFLQ_HFCLK_HZ + TFLQ_BAUD / 2) / TFLQ_BAUD - 1;
  *reg(UART0_BASE, UART_TXCTRL) = UART_TXCTRL_TXEN; /* one stop bit */
}

void tflq_uart_putc(char c) {
  /* Reading txdata returns only the FIFO-full flag in bit 31. */
  while (*reg(UART0_BASE, UART_TXDATA) & UART_TXDATA_FULL) {
  }
  *reg(UART0_BASE, UART_TXDATA) = (uint8_t)c;
}

void tflq_uart_puts(const char *s) {
  while (*s) tflq_uart_putc(*s++);
}

/*
 * picolibc's tinystdio has no default console: the program defines
 * stdin/stdout/stderr. Pointing them at the UART makes printf() and
 * TFLM's DebugLog (vfprintf(stdout)) print on UART0. Output is unbuffered.
 */
static int uart_stream_put(char c, FILE *file) {
  (void)file;
  tflq_uart_putc(c);
  return (unsigned char)c;
}

static FILE uart_stream = FDEV_SETUP_STREAM(uart_stream_put, NULL, NULL,
                                            _FDEV_SETUP_WRITE);
FILE *const stdin = &uart_stream;
FILE *const stdout = &uart_stream;
FILE *const stderr = &uart_stream;
