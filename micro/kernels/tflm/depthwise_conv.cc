// DEPTHWISE_CONV_2D for rv32imac (tflq): int8 activations and weights through tflq's
// plain-C kernel (micro/kernels), bit-exact with TFLM's reference
// DepthwiseConvPerChannel. Replaces tensorflow/lite/micro/kernels/depthwise_conv.cc
// the way TFLM's optimized kernel directories do; depthwise_conv_common.cc is TFLM's.
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/conv.h"
#include "tensorflow/lite/micro/kernels/depthwise_conv.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tflq_ops.h"

namespace tflite {
namespace {

struct OpData {
  OpDataConv conv;  // first: DepthwiseConvPrepare fills it through node->user_data
  int32_t* bias;    // bias + input_offset * sum(w)
};

void* Init(TfLiteContext* context, const char*, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(OpData));
}

void Fill(const TfLiteIntArray* in, const TfLiteIntArray* filter, const TfLiteIntArray* out,
          const TfLiteDepthwiseConvParams& params, const OpData& data, const void* weights,
          tflq_layer_t* l) {
  *l = tflq_layer_t{};
  l->op = TFLQ_OP_DEPTHWISE;
  l->format = TFLQ_FMT_INT8;
  l->bits = 8;
  l->kh = filter->data[1];
  l->kw = filter->data[2];
  l->out_channels = filter->data[3];
  l->in_h = in->data[1];
  l->in_w = in->data[2];
  l->in_c = in->data[3];
  l->depth = l->kh * l->kw;
  l->out_h = out->data[1];
  l->out_w = out->data[2];
  l->depth_multiplier = l->in_c > 0 ? l->out_channels / l->in_c : 0;
  l->stride_h = params.stride_height;
  l->stride_w = params.stride_width;
  l->dilation_h = params.dilation_height_factor;
  l->dilation_w = params.dilation_width_factor;
  l->pad_top = data.conv.padding.height;
  l->pad_left = data.conv.padding.width;
  l->input_offset = -data.conv.input_zero_point;
  l->output_offset = data.conv.output_zero_point;
  l->act_min = data.conv.output_activation_min;
  l->act_max = data.conv.output_activation_max;
  l->row_bytes = l->depth;
  l->bias = data.bias;
  l->multiplier = data.conv.per_channel_output_multiplier;
  l->shift = data.conv.per_channel_output_shift;
  l->requant_per_channel = 1;
  l->weights = static_cast<const uint8_t*>(weights);
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  TF_LITE_ENSURE_STATUS(DepthwiseConvPrepare(context, node));
  auto* data = static_cast<OpData*>(node->user_data);
  const auto& params = *static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
  MicroContext* micro_context = GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, kDepthwiseConvInputTensor);
  TfLiteTensor* filter =
      micro_context->AllocateTempInputTensor(node, kDepthwiseConvWeightsTensor);
  TfLiteTensor* bias = micro_context->AllocateTempInputTensor(node, kDepthwiseConvBiasTensor);
  TfLiteTensor* output =
      micro_context->AllocateTempOutputTensor(node, kDepthwiseConvOutputTensor);
  TfLiteStatus status = kTfLiteOk;
  if (input->type != kTfLiteInt8 || filter->type != kTfLiteInt8) {
    MicroPrintf("DEPTHWISE_CONV_2D: tflq's rv32 kernel runs int8 x int8 only (got %s x %s); "
                "generate the project with kernels='reference'",
                TfLiteTypeGetName(input->type), TfLiteTypeGetName(filter->type));
    status = kTfLiteError;
  } else {
    const int channels = filter->dims->data[3];
    const int depth = filter->dims->data[1] * filter->dims->data[2];
    data->bias = tflq::BiasWithInputOffset(context, filter, bias, -data->conv.input_zero_point,
                                           channels, depth, true);
    TF_LITE_ENSURE(context, data->bias != nullptr);
    tflq_layer_t layer;
    Fill(input->dims, filter->dims, output->dims, params, *data, filter->data.int8, &layer);
    status = tflq::CheckLayer(layer, "DEPTHWISE_CONV_2D");
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  if (bias != nullptr) micro_context->DeallocateTempTfLiteTensor(bias);
  micro_context->DeallocateTempTfLiteTensor(output);
  return status;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const auto& params = *static_cast<const TfLiteDepthwiseConvParams*>(node->builtin_data);
  const auto& data = *static_cast<const OpData*>(node->user_data);
  const TfLiteEvalTensor* input = micro::GetEvalInput(context, node, kDepthwiseConvInputTensor);
  const TfLiteEvalTensor* filter =
      micro::GetEvalInput(context, node, kDepthwiseConvWeightsTensor);
  TfLiteEvalTensor* output = micro::GetEvalOutput(context, node, kDepthwiseConvOutputTensor);
  tflq_layer_t layer;
  Fill(input->dims, filter->dims, output->dims, params, data,
       micro::GetTensorData<int8_t>(filter), &layer);
  tflq_layer_eval(&layer, micro::GetTensorData<int8_t>(input), input->dims->data[0],
                  micro::GetTensorData<int8_t>(output), nullptr);
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_DEPTHWISE_CONV_2D() { return micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace tflite
