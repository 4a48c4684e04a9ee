/*
 * The one C definition of TFLM's int32 -> int8 requantization, for tflq's kernels and
 * the accuracy firmware's features (plain C, no TFLM types). converters/requantize.py
 * (double_rounding) is the reference it is tested against.
 *
 * TFLM's MultiplyByQuantizedMultiplier (tensorflow/lite/kernels/internal/common.cc,
 * without TFLITE_SINGLE_ROUNDING) is gemmlowp's double rounding:
 *
 *   a    = acc * 2^left                              (int32; TFLM wraps on overflow)
 *   high = SaturatingRoundingDoublingHighMul(a, m)   = trunc((a*m + nudge) / 2^31),
 *          nudge = 2^30 if a*m >= 0 else 1 - 2^30
 *   out  = RoundingDivideByPOT(high, right)          (round half away from zero)
 *
 * For m >= 0 (QuantizeMultiplier gives m in [2^30, 2^31), or 0) the saturating case
 * (a = m = INT32_MIN) cannot occur, and the nudge-and-truncate equals floor division:
 * high = floor((a*m + 2^30) / 2^31). (With a*m = -(k 2^31 + r), 0 <= r < 2^31, both
 * give -k - [r > 2^30].) With M2 = 2m as an unsigned 32-bit number,
 * a*m + 2^30 = (a*M2 + 2^31) / 2, so
 *   high = floor(a*M2 / 2^32) + bit 31 of (a*M2 mod 2^32)
 * which rv32 computes with one mulhsu and one mul (gcc emits both from the C below).
 * The division by 2^right is gemmlowp's, shifts and one compare.
 *
 * A left shift that overflows int32 wraps, as TFLM's `x * (1 << left_shift)` does
 * with gcc. converters/requantize.py does not model that case, and the tests keep
 * clear of it; tests/test_kernels.py checks the rest against it, and
 * benchmarks/requantize_cost.py on the FE310 in QEMU.
 */
#ifndef TFLQ_REQUANTIZE_H_
#define TFLQ_REQUANTIZE_H_

#include <stdint.h>

/* The requantization of one multiplier and shift, split at its left shift: loops
 * that fold 2^left into their weights and bias (wrapping, so equal mod 2^32) make it
 * once and apply tflq_requant_shifted to acc * 2^left. */
typedef struct {
  int32_t left;  /* max(shift, 0) */
  int32_t right; /* max(-shift, 0) */
  uint32_t m2;   /* 2 * multiplier */
  int32_t mask;  /* 2^right - 1 */
  int32_t half;  /* mask / 2 */
} tflq_requant_t;

static inline __attribute__((always_inline)) tflq_requant_t tflq_requant_make(
    int32_t multiplier, int32_t shift) {
  tflq_requant_t r;
  r.left = shift & ~(shift >> 31); /* no branch */
  r.right = r.left - shift;
  r.m2 = (uint32_t)multiplier << 1;
  r.mask = (int32_t)(((uint32_t)1 << r.right) - 1);
  r.half = r.mask >> 1;
  return r;
}

/* RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(a, m), right) for a = acc * 2^left. */
static inline __attribute__((always_inline)) int32_t tflq_requant_shifted(int32_t a,
                                                                          tflq_requant_t r) {
  const int64_t product = (int64_t)a * (int64_t)r.m2; /* a * M2 */
  const int32_t high = (int32_t)(product >> 32) + (int32_t)((uint32_t)product >> 31);
  /* gemmlowp RoundingDivideByPOT: round half away from zero. */
  const int32_t threshold = r.half + (int32_t)((uint32_t)high >> 31);
  return (high >> r.right) + ((high & r.mask) > threshold);
}

/* TFLM's MultiplyByQuantizedMultiplier, bit for bit, for multiplier >= 0 and
 * -31 <= shift <= 30 (the layer checks enforce both). */
static inline __attribute__((always_inline)) int32_t tflq_multiply_by_quantized_multiplier(
    int32_t acc, int32_t multiplier, int32_t shift) {
  const tflq_requant_t r = tflq_requant_make(multiplier, shift);
  return tflq_requant_shifted((int32_t)((uint32_t)acc << r.left), r);
}

#endif /* TFLQ_REQUANTIZE_H_ */
