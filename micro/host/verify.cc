// The flatbuffers Verifier over TFLite's schema, alone, for tflq's model entrance
// (converters/verifier.py): header-only, built with the host compiler from the same
// flatbuffers and schema headers the firmware uses.
#include <cstddef>
#include <cstdint>

#include "flatbuffers/flatbuffers.h"
#include "tensorflow/lite/schema/schema_generated.h"

extern "C" __attribute__((visibility("default"))) int tflq_verify_model(const uint8_t* data,
                                                                        size_t size) {
  flatbuffers::Verifier verifier(data, size);
  return tflite::VerifyModelBuffer(verifier) ? 1 : 0;
}
