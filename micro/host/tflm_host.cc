// TFLite-Micro on the host, behind a small C API for ctypes: the device's reference.
//
// converters/tflm_host.py compiles this file with the same TFLM tree, the same kernel
// sources (TFLM's reference ones or tflq's) and the same op registrations as the
// firmware, for x86-64 with the system compiler. TFLQ_HOST_OPS_H names a generated
// header defining TFLQ_HOST_NUM_OPS and TFLQ_HOST_REGISTER_OPS(op_resolver), the
// firmware's resolver calls.
//
// Every model is checked by the flatbuffers Verifier before TFLM reads it. TFLM's
// log goes into a buffer that the caller reads (tflq_host_log), not to stderr.

#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

#include "flatbuffers/flatbuffers.h"
#include "tensorflow/lite/micro/debug_log.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include TFLQ_HOST_OPS_H

namespace {

char g_log[4096];
size_t g_log_used = 0;

void Append(const char* format, va_list args) {
  if (g_log_used + 1 >= sizeof(g_log)) return;
  const int n = vsnprintf(g_log + g_log_used, sizeof(g_log) - g_log_used, format, args);
  if (n > 0) {
    g_log_used += static_cast<size_t>(n);
    if (g_log_used >= sizeof(g_log)) g_log_used = sizeof(g_log) - 1;
  }
}

using OpResolver = tflite::MicroMutableOpResolver<TFLQ_HOST_NUM_OPS>;

struct Host {
  uint8_t* model_bytes;  // the caller's flatbuffer, copied (malloc: 16-aligned)
  uint8_t* arena;
  OpResolver* resolver;
  tflite::MicroInterpreter* interpreter;
};

void Free(Host* host) {
  if (host == nullptr) return;
  if (host->interpreter != nullptr) host->interpreter->~MicroInterpreter();
  if (host->resolver != nullptr) host->resolver->~OpResolver();
  free(host->interpreter);
  free(host->resolver);
  free(host->arena);
  free(host->model_bytes);
  free(host);
}

TfLiteTensor* Tensor(Host* host, int is_input, size_t index) {
  tflite::MicroInterpreter& interp = *host->interpreter;
  if (is_input) return index < interp.inputs_size() ? interp.input(index) : nullptr;
  return index < interp.outputs_size() ? interp.output(index) : nullptr;
}

}  // namespace

extern "C" void DebugLog(const char* format, va_list args) { Append(format, args); }

extern "C" int DebugVsnprintf(char* buffer, size_t buf_size, const char* format,
                              va_list vlist) {
  return vsnprintf(buffer, buf_size, format, vlist);
}

// The API is all this library exports (it is built with -fvisibility=hidden).
#define TFLQ_HOST_API __attribute__((visibility("default")))

extern "C" {

// TFLM's log since the last call (NUL-terminated, truncated to 4 KiB); clears it.
TFLQ_HOST_API const char* tflq_host_log(void) {
  static char copy[sizeof(g_log)];
  memcpy(copy, g_log, g_log_used);
  copy[g_log_used] = '\0';
  g_log_used = 0;
  return copy;
}

// A verified model with its tensors allocated in an arena of `arena_bytes`; null on
// failure, with the reason in `status`: 1 not a valid flatbuffer, 2 schema version,
// 3 AllocateTensors failed (the log says why), 4 out of host memory.
TFLQ_HOST_API void* tflq_host_new(const uint8_t* model, size_t model_len, size_t arena_bytes,
                    int* status) {
  tflite::InitializeTarget();
  flatbuffers::Verifier verifier(model, model_len);
  if (!tflite::VerifyModelBuffer(verifier)) {
    *status = 1;
    return nullptr;
  }
  Host* host = static_cast<Host*>(calloc(1, sizeof(Host)));
  if (host == nullptr) {
    *status = 4;
    return nullptr;
  }
  host->model_bytes = static_cast<uint8_t*>(malloc(model_len));
  host->arena = static_cast<uint8_t*>(aligned_alloc(16, (arena_bytes + 15) / 16 * 16));
  void* resolver_memory = malloc(sizeof(OpResolver));
  void* interpreter_memory = malloc(sizeof(tflite::MicroInterpreter));
  if (!host->model_bytes || !host->arena || !resolver_memory || !interpreter_memory) {
    free(resolver_memory);
    free(interpreter_memory);
    Free(host);
    *status = 4;
    return nullptr;
  }
  memcpy(host->model_bytes, model, model_len);
  const tflite::Model* parsed = tflite::GetModel(host->model_bytes);
  if (parsed->version() != TFLITE_SCHEMA_VERSION) {
    free(resolver_memory);
    free(interpreter_memory);
    Free(host);
    *status = 2;
    return nullptr;
  }
  host->resolver = new (resolver_memory) OpResolver();
  OpResolver& op_resolver = *host->resolver;
  TFLQ_HOST_REGISTER_OPS(op_resolver);
  host->interpreter = new (interpreter_memory)
      tflite::MicroInterpreter(parsed, op_resolver, host->arena, arena_bytes);
  if (host->interpreter->AllocateTensors() != kTfLiteOk) {
    Free(host);
    *status = 3;
    return nullptr;
  }
  *status = 0;
  return host;
}

TFLQ_HOST_API void tflq_host_free(void* host) { Free(static_cast<Host*>(host)); }

TFLQ_HOST_API size_t tflq_host_count(void* host, int is_input) {
  tflite::MicroInterpreter& interp = *static_cast<Host*>(host)->interpreter;
  return is_input ? interp.inputs_size() : interp.outputs_size();
}

// Type (TfLiteType), byte size and shape of an input or output tensor; -1 if absent.
TFLQ_HOST_API int tflq_host_tensor(void* host, int is_input, size_t index, size_t* bytes, int* dims,
                     int* shape, int max_dims) {
  const TfLiteTensor* t = Tensor(static_cast<Host*>(host), is_input, index);
  if (t == nullptr) return -1;
  *bytes = t->bytes;
  *dims = t->dims->size;
  for (int i = 0; i < t->dims->size && i < max_dims; ++i) shape[i] = t->dims->data[i];
  return static_cast<int>(t->type);
}

TFLQ_HOST_API int tflq_host_set_input(void* host, size_t index, const void* data, size_t len) {
  TfLiteTensor* t = Tensor(static_cast<Host*>(host), 1, index);
  if (t == nullptr || t->bytes != len) return -1;
  memcpy(t->data.raw, data, len);
  return 0;
}

TFLQ_HOST_API int tflq_host_invoke(void* host) {
  return static_cast<Host*>(host)->interpreter->Invoke() == kTfLiteOk ? 0 : -1;
}

TFLQ_HOST_API int tflq_host_get_output(void* host, size_t index, void* data, size_t len) {
  const TfLiteTensor* t = Tensor(static_cast<Host*>(host), 0, index);
  if (t == nullptr || t->bytes != len) return -1;
  memcpy(data, t->data.raw, len);
  return 0;
}

TFLQ_HOST_API size_t tflq_host_arena_used(void* host) {
  return static_cast<Host*>(host)->interpreter->arena_used_bytes();
}

}  // extern "C"
