// FULLY_CONNECTED for rv32imac (tflq): int8 activations and weights through tflq's
// plain-C kernel (micro/kernels), bit-exact with TFLM's reference FullyConnected and
// FullyConnectedPerChannel. Replaces tensorflow/lite/micro/kernels/fully_connected.cc
// the way TFLM's optimized kernel directories do; fully_connected_common.cc
// (quantization parameters) is TFLM's own.
#include "tensorflow/lite/c/builtin_op_data.h"
#include "tensorflow/lite/micro/kernels/fully_connected.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_log.h"
#include "tflq_ops.h"

namespace tflite {
namespace {

struct OpData {
  OpDataFullyConnected fc;
  int32_t* bias;  // bias + input_offset * sum(w)
};

void* Init(TfLiteContext* context, const char*, size_t) {
  return context->AllocatePersistentBuffer(context, sizeof(OpData));
}

void Fill(const TfLiteIntArray* filter, const OpData& data, const void* weights,
          tflq_layer_t* l) {
  *l = tflq_layer_t{};
  l->op = TFLQ_OP_FC;
  l->format = TFLQ_FMT_INT8;
  l->bits = 8;
  l->out_channels = filter->data[0];
  l->depth = filter->data[1];
  l->in_h = l->in_w = l->out_h = l->out_w = l->kh = l->kw = 1;
  l->stride_h = l->stride_w = l->dilation_h = l->dilation_w = l->depth_multiplier = 1;
  l->in_c = l->depth;
  l->input_offset = -data.fc.input_zero_point;
  l->output_offset = data.fc.output_zero_point;
  l->act_min = data.fc.output_activation_min;
  l->act_max = data.fc.output_activation_max;
  l->row_bytes = l->depth;
  l->bias = data.bias;
  if (data.fc.is_per_channel) {
    l->multiplier = data.fc.per_channel_output_multiplier;
    l->shift = data.fc.per_channel_output_shift;
    l->requant_per_channel = 1;
  } else {
    l->multiplier = &data.fc.output_multiplier;
    l->shift = reinterpret_cast<const int32_t*>(&data.fc.output_shift);
    l->requant_per_channel = 0;
  }
  l->weights = static_cast<const uint8_t*>(weights);
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  auto* data = static_cast<OpData*>(node->user_data);
  const auto* params = static_cast<const TfLiteFullyConnectedParams*>(node->builtin_data);
  MicroContext* micro_context = GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, kFullyConnectedInputTensor);
  TfLiteTensor* filter =
      micro_context->AllocateTempInputTensor(node, kFullyConnectedWeightsTensor);
  TfLiteTensor* bias = micro_context->AllocateTempInputTensor(node, kFullyConnectedBiasTensor);
  TfLiteTensor* output =
      micro_context->AllocateTempOutputTensor(node, kFullyConnectedOutputTensor);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr);
  TfLiteStatus status = kTfLiteOk;
  if (input->type != kTfLiteInt8 || filter->type != kTfLiteInt8 || output->type != kTfLiteInt8) {
    MicroPrintf("FULLY_CONNECTED: tflq's rv32 kernel runs int8 x int8 only (got %s x %s); "
                "generate the project with kernels='reference'",
                TfLiteTypeGetName(input->type), TfLiteTypeGetName(filter->type));
    status = kTfLiteError;
  } else {
    status = CalculateOpDataFullyConnected(context, params->activation, input->type, input,
                                           filter, bias, output, &data->fc);
  }
  if (status == kTfLiteOk) {
    const int channels = filter->dims->data[0];
    const int depth = filter->dims->data[1];
    data->bias = tflq::BiasWithInputOffset(context, filter, bias, -data->fc.input_zero_point,
                                           channels, depth, false);
    TF_LITE_ENSURE(context, data->bias != nullptr);
    tflq_layer_t layer;
    Fill(filter->dims, *data, filter->data.int8, &layer);
    status = tflq::CheckLayer(layer, "FULLY_CONNECTED");
    if (status == kTfLiteOk && (input->bytes % depth != 0 ||
                                output->bytes != input->bytes / depth * channels)) {
      MicroPrintf("FULLY_CONNECTED: input of %u values does not fit weights %d x %d",
                  static_cast<unsigned>(input->bytes), channels, depth);
      status = kTfLiteError;
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(filter);
  if (bias != nullptr) micro_context->DeallocateTempTfLiteTensor(bias);
  micro_context->DeallocateTempTfLiteTensor(output);
  return status;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const auto& data = *static_cast<const OpData*>(node->user_data);
  const TfLiteEvalTensor* input =
      micro::GetEvalInput(context, node, kFullyConnectedInputTensor);
  const TfLiteEvalTensor* filter =
      micro::GetEvalInput(context, node, kFullyConnectedWeightsTensor);
  TfLiteEvalTensor* output = micro::GetEvalOutput(context, node, kFullyConnectedOutputTensor);
  tflq_layer_t layer;
  Fill(filter->dims, data, micro::GetTensorData<int8_t>(filter), &layer);
  const int batches = micro::GetTensorShape(input).FlatSize() / layer.depth;
  tflq_layer_eval(&layer, micro::GetTensorData<int8_t>(input), batches,
                  micro::GetTensorData<int8_t>(output), nullptr);
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration Register_FULLY_CONNECTED() { return micro::RegisterOp(Init, Prepare, Eval); }

}  // namespace tflite
