// tflq's TFLite-Micro operators: the packed low-bit layer custom op and the helpers
// the rv32 int8 FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D kernels share.
#ifndef TFLQ_OPS_H_
#define TFLQ_OPS_H_

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"
#include "tflq_kernels.h"

namespace tflq {

// Custom operator "TFLQ_PACKED": inputs (int8 or packed activation, uint8 TQP2 blob), output
// int8 activation. Register with
//   op_resolver.AddCustom(tflq::kPackedOpName, tflq::Register_TFLQ_PACKED());
constexpr char kPackedOpName[] = "TFLQ_PACKED";
const TFLMRegistration* Register_TFLQ_PACKED();

// For the rv32 int8 kernels: bias + input_offset * sum(w) per output channel, in a
// persistent buffer (what tflq_layer_t.bias holds). `depthwise`: the filter is
// (1, kh, kw, channels), else (channels, ..., depth).
int32_t* BiasWithInputOffset(TfLiteContext* context, const TfLiteTensor* filter,
                             const TfLiteTensor* bias, int32_t input_offset, int channels,
                             int depth, bool depthwise);

// Checks a layer filled from tensors; on failure logs "<op>: <reason>".
TfLiteStatus CheckLayer(const tflq_layer_t& layer, const char* op);

}  // namespace tflq

#endif  // TFLQ_OPS_H_
