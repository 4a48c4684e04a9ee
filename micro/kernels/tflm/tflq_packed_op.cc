// TFLQ_PACKED: a FULLY_CONNECTED, CONV_2D or DEPTHWISE_CONV_2D layer whose weights
// are a TQP2 blob (micro/kernels/tflq_kernels.h), read in place from flash, or from a
// copy in the arena when the blob has TFLQ_FLAG_IN_RAM (made once, at Prepare).
// Custom options, when present, are one little-endian u16: the CONV_2D's
// stage_channels (tflq_kernels.h), whose blocks of rows the kernel copies into its
// scratch at every Eval, so the blob is read once per inference and not once per output
// position (converters/packing.py: stage_per_eval).
// Prepare checks the blob and the tensors against each other and refuses anything
// inconsistent with a message; Eval decodes the checked header (no validation) and runs
// the plain-C kernel.
#include <string.h>

#include "tflq_kernels.h"
#include "tflq_ops.h"

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/micro_context.h"
#include "tensorflow/lite/micro/micro_log.h"

namespace tflq {
namespace {

constexpr int kInput = 0;
constexpr int kBlob = 1;
constexpr int kOutput = 0;

struct OpData {
  int scratch_index;
  int stage_channels;  // from the custom options; 0: none
  const uint8_t* blob;  // the checked blob: in the flatbuffer, or its copy in the arena
};

void* Init(TfLiteContext* context, const char* options, size_t length) {
  auto* data = static_cast<OpData*>(context->AllocatePersistentBuffer(context, sizeof(OpData)));
  if (data != nullptr) {  // Prepare refuses options of any other length
    data->stage_channels = options != nullptr && length == 2
                               ? static_cast<uint8_t>(options[0]) |
                                     static_cast<uint8_t>(options[1]) << 8
                               : (length == 0 ? 0 : -1);
  }
  return data;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  TF_LITE_ENSURE_EQ(context, node->inputs->size, 2);
  TF_LITE_ENSURE_EQ(context, node->outputs->size, 1);
  tflite::MicroContext* micro_context = tflite::GetMicroContext(context);
  TfLiteTensor* input = micro_context->AllocateTempInputTensor(node, kInput);
  TfLiteTensor* blob = micro_context->AllocateTempInputTensor(node, kBlob);
  TfLiteTensor* output = micro_context->AllocateTempOutputTensor(node, kOutput);
  TF_LITE_ENSURE(context, input != nullptr && blob != nullptr && output != nullptr);
  TfLiteStatus status = kTfLiteOk;
  tflq_layer_t layer;
  char err[160];
  if (input->type != kTfLiteInt8 || output->type != kTfLiteInt8 || blob->type != kTfLiteUInt8) {
    MicroPrintf("TFLQ_PACKED: needs int8 input and output and a uint8 blob");
    status = kTfLiteError;
  } else if (blob->data.uint8 == nullptr) {
    MicroPrintf("TFLQ_PACKED: the packed weights are not a constant tensor");
    status = kTfLiteError;
  } else if (tflq_layer_parse(blob->data.uint8, blob->bytes, &layer, err, sizeof(err)) != 0) {
    MicroPrintf("TFLQ_PACKED: %s", err);
    status = kTfLiteError;
  } else if (static_cast<OpData*>(node->user_data)->stage_channels < 0) {
    MicroPrintf("TFLQ_PACKED: custom options are not one u16 (stage_channels)");
    status = kTfLiteError;
  } else if (tflq_layer_stage(&layer, static_cast<OpData*>(node->user_data)->stage_channels,
                              err, sizeof(err)) != 0) {
    MicroPrintf("TFLQ_PACKED: custom options: %s", err);
    status = kTfLiteError;
  } else {
    const size_t per_input = tflq_input_bytes(&layer);  // packed activations: fewer bytes
    const size_t per_output = tflq_output_bytes(&layer);
    const size_t batches = input->bytes / per_input;
    if (batches == 0 || batches * per_input != input->bytes ||
        batches * per_output != output->bytes) {
      MicroPrintf("TFLQ_PACKED: input %u / output %u bytes do not match the packed layer "
                  "(%u -> %u per batch)",
                  static_cast<unsigned>(input->bytes), static_cast<unsigned>(output->bytes),
                  static_cast<unsigned>(per_input), static_cast<unsigned>(per_output));
      status = kTfLiteError;
    } else {
      auto* data = static_cast<OpData*>(node->user_data);
      data->scratch_index = -1;
      data->blob = blob->data.uint8;
      if (blob->data.uint8[7] & TFLQ_FLAG_IN_RAM) {
        void* copy = context->AllocatePersistentBuffer(context, blob->bytes);
        if (copy == nullptr) {
          MicroPrintf("TFLQ_PACKED: no arena left to copy %u bytes of weights into RAM",
                      static_cast<unsigned>(blob->bytes));
          status = kTfLiteError;
        } else {
          memcpy(copy, blob->data.uint8, blob->bytes);
          data->blob = static_cast<const uint8_t*>(copy);
        }
      }
      const size_t scratch = tflq_scratch_bytes(&layer);
      if (status == kTfLiteOk && scratch > 0) {
        status = context->RequestScratchBufferInArena(context, scratch, &data->scratch_index);
      }
    }
  }
  micro_context->DeallocateTempTfLiteTensor(input);
  micro_context->DeallocateTempTfLiteTensor(blob);
  micro_context->DeallocateTempTfLiteTensor(output);
  return status;
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, kInput);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, kOutput);
  const auto* data = static_cast<const OpData*>(node->user_data);
  tflq_layer_t layer;  // the blob passed tflq_layer_parse at Prepare: decode only
  tflq_layer_decode(data->blob, &layer);
  layer.stage_channels = data->stage_channels;
  void* scratch =
      data->scratch_index >= 0 ? context->GetScratchBuffer(context, data->scratch_index) : nullptr;
  const size_t per_input = tflq_input_bytes(&layer);
  const int batches = static_cast<int>(tflite::micro::GetTensorShape(input).FlatSize() / per_input);
  tflq_layer_eval(&layer, input->data.data, batches, output->data.data, scratch);
  return kTfLiteOk;
}

}  // namespace

const TFLMRegistration* Register_TFLQ_PACKED() {
  static const TFLMRegistration registration = tflite::micro::RegisterOp(Init, Prepare, Eval);
  return &registration;
}

}  // namespace tflq
