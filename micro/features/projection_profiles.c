#include "projection_profiles.h"

#include <string.h>

/* TFLM's MultiplyByQuantizedMultiplier, double rounding (gemmlowp):
 * SaturatingRoundingDoublingHighMul, then RoundingDivideByPOT. */
static int32_t requantize(int32_t x, int32_t multiplier, int shift) {
  const int left = shift > 0 ? shift : 0;
  const int right = shift > 0 ? 0 : -shift;
  const int64_t a = (int64_t)x * (1 << left);
  if (a == INT32_MIN && multiplier == INT32_MIN) return INT32_MAX;
  const int64_t prod = a * multiplier;
  const int64_t nudge = prod >= 0 ? (1 << 30) : (1 - (1 << 30));
  const int32_t high = (int32_t)((prod + nudge) / ((int64_t)1 << 31));
  const int32_t mask = (int32_t)((1u << right) - 1);
  const int32_t remainder = high & mask;
  const int32_t threshold = (mask >> 1) + (high < 0 ? 1 : 0);
  return (high >> right) + (remainder > threshold ? 1 : 0);
}

void tflq_projection_profiles(const uint8_t* image, int height, int width, int bins,
                              const int32_t* multiplier, const int32_t* shift,
                              int32_t zero_point, int32_t* sums, int8_t* out) {
  const int diagonals = height + width - 1;
  int32_t* rows = sums;
  int32_t* columns = sums + bins;
  int32_t* diag = sums + 2 * bins;
  int32_t* anti = sums + 3 * bins;
  memset(sums, 0, sizeof(int32_t) * 4 * bins);
  for (int i = 0; i < height; ++i) {
    const int row_bin = i * bins / height;
    for (int j = 0; j < width; ++j) {
      const int32_t p = image[i * width + j];
      rows[row_bin] += p;
      columns[j * bins / width] += p;
      diag[(i - j + width - 1) * bins / diagonals] += p;
      anti[(i + j) * bins / diagonals] += p;
    }
  }
  for (int k = 0; k < 4 * bins; ++k) {
    int32_t q = requantize(sums[k], multiplier[k], shift[k]) + zero_point;
    out[k] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
}
