// The ILP32 arena probe (converters/tflm_host.py arena_bytes_ilp32): TFLM built for a
// 32-bit host (i386, -malign-double: rv32's struct layout) with the firmware's kernels
// and registrations allocates one model and prints
//   ARENA <used> <needed>
// <used>: arena_used_bytes(), what the firmware's STATS line reports.
// <needed>: the smallest arena (a multiple of 16) in which AllocateTensors succeeds and
// four invocations give the outputs they give in a large arena. It is more than
// <used>: a persistent buffer a kernel allocates in Prepare while temporary tensors are
// live can land on them, which TFLM does not check (it tests against the head, not the
// temporaries: 90b983c2 single_arena_buffer_allocator.cc), and the firmware then fails
// or traps. Each trial runs in a forked child, so such a trap here ends only the trial.
// On failure: "ERROR <TFLM's log>", exit 3.
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"
#include TFLQ_HOST_OPS_H

extern "C" const char* tflq_host_log(void);

namespace {

using OpResolver = tflite::MicroMutableOpResolver<TFLQ_HOST_NUM_OPS>;
constexpr int kInputs = 4;

uint8_t* Aligned(std::vector<uint8_t>& v) {
  return reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(v.data()) + 15) & ~uintptr_t{15});
}

// Allocates in an arena of `size` bytes and runs kInputs fixed inputs; returns the
// concatenated outputs, or false.
bool Run(const tflite::Model* model, const OpResolver& resolver, size_t size,
         std::vector<uint8_t>* outputs, size_t* used) {
  std::vector<uint8_t> arena(size + 16);
  tflite::MicroInterpreter interpreter(model, resolver, Aligned(arena), size);
  if (interpreter.AllocateTensors() != kTfLiteOk) return false;
  *used = interpreter.arena_used_bytes();
  uint32_t seed = 12345;
  for (int k = 0; k < kInputs; ++k) {
    for (size_t i = 0; i < interpreter.inputs_size(); ++i) {
      TfLiteTensor* in = interpreter.input(i);
      for (size_t b = 0; b < in->bytes; ++b) {
        seed = seed * 1103515245u + 12345u;
        in->data.uint8[b] = static_cast<uint8_t>(seed >> 16);
      }
    }
    if (interpreter.Invoke() != kTfLiteOk) return false;
    for (size_t i = 0; i < interpreter.outputs_size(); ++i) {
      const TfLiteTensor* out = interpreter.output(i);
      outputs->insert(outputs->end(), out->data.uint8, out->data.uint8 + out->bytes);
    }
  }
  return true;
}

// Whether an arena of `size` works, tried in a child process.
bool Works(const tflite::Model* model, const OpResolver& resolver, size_t size,
           const std::vector<uint8_t>& expected) {
  fflush(stdout);
  const pid_t pid = fork();
  if (pid == 0) {
    alarm(20);  // a trial that never ends does not work
    std::vector<uint8_t> got;
    size_t used = 0;
    const bool ok = Run(model, resolver, size, &got, &used) && got == expected;
    _exit(ok ? 0 : 1);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s model.tflite max_arena_bytes\n", argv[0]);
    return 2;
  }
  FILE* f = fopen(argv[1], "rb");
  if (f == nullptr) return 2;
  std::vector<uint8_t> bytes;
  int c;
  while ((c = fgetc(f)) != EOF) bytes.push_back(static_cast<uint8_t>(c));
  fclose(f);
  const size_t big = strtoul(argv[2], nullptr, 10) / 16 * 16;
  std::vector<uint8_t> storage(bytes.size() + 16);  // TFLM reads the buffers in place
  uint8_t* data = Aligned(storage);
  memcpy(data, bytes.data(), bytes.size());
  flatbuffers::Verifier verifier(data, bytes.size());
  if (!tflite::VerifyModelBuffer(verifier)) {
    printf("ERROR the flatbuffers Verifier rejects the model\n");
    return 3;
  }
  const tflite::Model* model = tflite::GetModel(data);
  alarm(120);  // TFLM looping on a strange model ends the probe, not the caller
  OpResolver op_resolver;
  TFLQ_HOST_REGISTER_OPS(op_resolver);

  std::vector<uint8_t> expected;
  size_t used = 0;
  if (!Run(model, op_resolver, big, &expected, &used)) {
    printf("ERROR %s\n", tflq_host_log());
    return 3;
  }
  size_t low = used / 16 * 16, high = big;  // low: not known to work; high: works
  if (low >= 16) low -= 16;
  while (high - low > 16) {
    const size_t mid = (low + (high - low) / 2) / 16 * 16;
    if (mid <= low) break;
    (Works(model, op_resolver, mid, expected) ? high : low) = mid;
  }
  printf("ARENA %zu %zu\n", used, high);
  return 0;
}
