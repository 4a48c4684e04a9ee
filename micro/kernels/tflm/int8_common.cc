// Shared by tflq's rv32 int8 FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D kernels.
#include "tensorflow/lite/micro/micro_log.h"
#include "tflq_ops.h"

namespace tflq {

int32_t* BiasWithInputOffset(TfLiteContext* context, const TfLiteTensor* filter,
                             const TfLiteTensor* bias, int32_t input_offset, int channels,
                             int depth, bool depthwise) {
  auto* out = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * channels));
  if (out == nullptr || filter->data.int8 == nullptr) return nullptr;
  const int8_t* w = filter->data.int8;
  for (int c = 0; c < channels; ++c) {
    int32_t sum = 0;
    for (int k = 0; k < depth; ++k)
      sum += depthwise ? w[k * channels + c] : w[c * depth + k];
    out[c] = (bias != nullptr && bias->data.i32 != nullptr ? bias->data.i32[c] : 0) +
             input_offset * sum;
  }
  return out;
}

TfLiteStatus CheckLayer(const tflq_layer_t& layer, const char* op) {
  char err[160];
  if (tflq_layer_check(&layer, err, sizeof(err)) != 0) {
    MicroPrintf("%s (tflq rv32 int8 kernel): %s", op, err);
    return kTfLiteError;
  }
  return kTfLiteOk;
}

}  // namespace tflq
