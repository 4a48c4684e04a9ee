"""``tflq micro``: a .tflite flatbuffer -> an FE310 TFLite-Micro project in --output_dir.

The project embeds --test_inputs images of --dataset's test set (quantized with
the model's input scale) for its self-test: `make qemu` prints one OUTPUT line per
image and the STATS line.
"""
import os

from absl import flags

from converters import micro_project
from converters.tflite import io_quantization
from tflq import datasets
from tflq.cli import flags_common
from tflq.errors import TflqError

_TFLITE = flags.DEFINE_string("tflite", None, "The int8 .tflite flatbuffer (tflq convert writes one).")
_BOARD = flags.DEFINE_enum("board", "hifive1-revb", list(micro_project.BOARDS), "Target board.")
_TEST_INPUTS = flags.DEFINE_integer(
    "test_inputs", 32, "Test images embedded for the self-test (0: one input of zero points).",
    lower_bound=0)


def main():
    for flag in (_TFLITE, flags_common.OUTPUT_DIR):
        if not flag.value:
            raise flags.ValidationError(f"--{flag.name} is required")
    if not os.path.exists(_TFLITE.value):
        raise TflqError(f"--tflite {_TFLITE.value}: no such file")
    with open(_TFLITE.value, "rb") as f:
        flatbuffer = f.read()
    inputs = None
    if _TEST_INPUTS.value:
        _, (x_test, _) = datasets.load(flags_common.DATASET.value)
        inputs = io_quantization(flatbuffer)[0].quantize(x_test[:_TEST_INPUTS.value])
    out = micro_project.generate_project(flatbuffer, flags_common.OUTPUT_DIR.value,
                                         board=_BOARD.value, test_inputs=inputs,
                                         overwrite=flags_common.OVERWRITE.value)
    budget = micro_project.memory_budget(flatbuffer)
    print(f"wrote {out}: {budget.describe()}\n"
          f"build: make -C {out}    run in QEMU: make -C {out} qemu   (needs TFLQ_TFLM_ROOT)")
