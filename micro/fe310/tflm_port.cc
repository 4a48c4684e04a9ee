// TFLite-Micro platform hooks for the FE310. Link this instead of TFLM's
// host debug_log.cc, micro_time.cc and system_setup.cc.

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "fe310.h"
#include "perf.h"
#include "tensorflow/lite/micro/debug_log.h"
#include "tensorflow/lite/micro/micro_time.h"
#include "tensorflow/lite/micro/system_setup.h"

// stdout is UART0 (uart.c), so TFLM's logs share the UART with printf.
extern "C" void DebugLog(const char* format, va_list args) {
#ifndef TF_LITE_STRIP_ERROR_STRINGS
  vfprintf(stdout, format, args);
#else
  (void)format;
  (void)args;
#endif
}

extern "C" int DebugVsnprintf(char* buffer, size_t buf_size, const char* format,
                              va_list vlist) {
  return vsnprintf(buffer, buf_size, format, vlist);
}

namespace tflite {

// Ticks are core clock cycles (mcycle). Under QEMU with -icount shift=0 they
// count instructions instead, so durations derived from them are not
// wall-clock times there. 32 bits at 16 MHz wrap after 268 s.
uint32_t ticks_per_second() { return TFLQ_HFCLK_HZ; }

uint32_t GetCurrentTimeTicks() { return tflq_read_mcycle32(); }

// A constructor in fe310.c has already set up the chip before main(); this
// call then does nothing.
void InitializeTarget() { tflq_fe310_init(); }

}  // namespace tflite
