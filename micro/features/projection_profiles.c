#include "projection_profiles.h"

#include <string.h>

#include "tflq_requantize.h"  /* micro/kernels; the project copies both to tflq_kernels/ */

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
    int32_t q = tflq_multiply_by_quantized_multiplier(sums[k], multiplier[k], shift[k]) + zero_point;
    out[k] = (int8_t)(q < -128 ? -128 : (q > 127 ? 127 : q));
  }
}
