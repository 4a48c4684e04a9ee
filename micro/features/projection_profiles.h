/*
 * Four-direction projection profiles of a uint8 image, straight to a model's
 * int8 input: the device side of tflq.layers.ProjectionProfiles (host reference:
 * converters/features.py, bit-exact). Plain C, no TFLM types.
 */
#ifndef TFLQ_PROJECTION_PROFILES_H_
#define TFLQ_PROJECTION_PROFILES_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * out[d * bins + b] for d = rows, columns, diagonals (i - j), anti-diagonals
 * (i + j): the sum of the pixels in bin b of direction d (line l of L lines is in
 * bin l * bins / L), requantized with multiplier[k] / shift[k] (TFLite's
 * QuantizeMultiplier of 1 / (255 * n_k * input_scale)) plus zero_point, clamped
 * to int8. sums: caller's scratch of 4 * bins int32.
 */
void tflq_projection_profiles(const uint8_t* image, int height, int width, int bins,
                              const int32_t* multiplier, const int32_t* shift,
                              int32_t zero_point, int32_t* sums, int8_t* out);

#ifdef __cplusplus
}
#endif

#endif  // TFLQ_PROJECTION_PROFILES_H_
