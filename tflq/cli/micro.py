"""``tflq micro``: a .tflite flatbuffer -> an FE310 TFLite-Micro project in --output_dir.

The project embeds --test_inputs images of --dataset's test set (quantized with
the model's input scale) for its self-test: `make qemu` prints one OUTPUT line per
image and the STATS line. FC / conv layers whose weights take <= 4 bits become packed
TFLQ_PACKED ops (--pack=auto|on|off); the others run tflq's rv32 int8 kernels
(--kernels=tflq) or TFLM's reference ones (--kernels=reference). The command prints
how each layer was packed, or why it stays int8.
"""
import os

from absl import flags

from converters import firmware_kernels, micro_project, packing
from converters.tflite import io_quantization
from tflq import datasets
from tflq.cli import flags_common
from tflq.errors import TflqError

_TFLITE = flags.DEFINE_string("tflite", None, "The int8 .tflite flatbuffer (tflq convert writes one).")
_BOARD = flags.DEFINE_enum("board", "hifive1-revb", list(micro_project.BOARDS), "Target board.")
_TEST_INPUTS = flags.DEFINE_integer(
    "test_inputs", 32, "Test images embedded for the self-test (0: one input of zero points).",
    lower_bound=0)
_PACK = flags.DEFINE_enum(
    "pack", "auto", ["auto", "on", "off"],
    "Pack FC / conv layers with <= 4-bit weights into TFLQ_PACKED ops (auto: when any is "
    "eligible; on: the same, and say so when none is; off: keep every layer int8).")
_KERNELS = flags.DEFINE_enum(
    "kernels", "tflq", list(firmware_kernels.KERNEL_CHOICES),
    "int8 FC / CONV_2D / DEPTHWISE_CONV_2D kernels: tflq's rv32 ones or TFLM's reference.")


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
    pack = {"auto": None, "on": True, "off": False}[_PACK.value]
    out = micro_project.generate_project(flatbuffer, flags_common.OUTPUT_DIR.value,
                                         board=_BOARD.value, test_inputs=inputs,
                                         overwrite=flags_common.OVERWRITE.value, pack=pack,
                                         kernels=_KERNELS.value)
    firmware = flatbuffer
    if pack is not False:
        packed, report = packing.pack_model(flatbuffer)
        for line in micro_project.packing_lines(report):
            print(line)
        if any(r.encoding for r in report):
            firmware = packed
        elif pack:
            print("--pack=on: no layer has weights of <= 4 bits; the model stays int8")
    plan = firmware_kernels.plan(firmware, _KERNELS.value)
    budget = micro_project.memory_budget(flatbuffer, firmware, plan)
    print(f"kernels: {plan.note}\n"
          f"wrote {out}: {budget.describe()}\n"
          f"build: make -C {out}    run in QEMU: make -C {out} qemu   (TFLQ_TFLM_ROOT: a "
          f"folder with the TFLM sources; converters.tflm.source_root() unpacks one)")
