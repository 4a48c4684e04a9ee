"""``make demo``: the whole product in one run, on Fashion-MNIST.

float CNN -> calibrated QAT, int8 and a low-bit scheme -> TFLite flatbuffers (low-bit
levels exact) -> an FE310 firmware for each, built with TFLM and run in QEMU -> one
table: TFLite accuracy (10,000 test images), on-device accuracy over the embedded
images, bit-exactness against the host reference, weight bytes, flash, RAM used and
instructions per inference, every device figure from the device.

The TFLM sources come from ``converters.tflm_sources`` (``TFLQ_TFLM_ROOT``,
``TFLQ_TFLM_ARCHIVE`` or the pinned downloads).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from tflq.converters import firmware_run, micro_project, packing, tflm
from tflq.converters import flatbuffer as fb
from tflq import _env, datasets, outputs, pipeline
from tflq.schemes import Scheme


@dataclasses.dataclass(frozen=True)
class Row:
    scheme: str
    tflite_accuracy: float  # tf.lite reference kernels, the whole test set
    device_accuracy: float  # argmax of the firmware's OUTPUT lines vs the labels
    device_images: int
    bit_exact: bool  # every OUTPUT line equals the host reference
    weight_bytes: int  # FC / conv weights + biases (packed blobs) in the firmware's model
    flash_bytes: int  # the firmware image (code, constants, .data) less the test images
    ram_used: int  # arena + stack high water + static data, as measured on the device
    instructions: int  # per inference (minstret, QEMU -icount shift=0)
    kernels: str  # what the generator chose, layer by layer (packing.kernel_summary)


def _progress(start: float, text: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {text}", flush=True)


def run(output_dir: str, low_bit: str = "log3", epochs: float = 3, qat_epochs: float = 1,
        device_images: int = 100, overwrite: bool = False) -> list[Row]:
    """Runs the demo into ``output_dir`` (written atomically) and returns its table rows."""
    outputs.check_free(output_dir, overwrite)
    tflm.source_root()  # the TFLM sources first: one line naming what to set if absent
    start = time.perf_counter()
    with outputs.atomic_dir(output_dir, overwrite) as tmp, _env.stderr_to_tempfile() as log:
        tmp = Path(tmp)
        rows = _run(tmp, start, low_bit, epochs, qat_epochs, device_images)
        log.seek(0)
        (tmp / "tensorflow.log").write_bytes(log.read())
        table = format_table(rows, device_images)
        (tmp / "summary.md").write_text(table + "\n")
        (tmp / "summary.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows],
                                                     indent=2) + "\n")
    _progress(start, f"done: {output_dir}/summary.md")
    print()
    print(table)
    return rows


def _run(tmp: Path, start: float, low_bit: str, epochs: float, qat_epochs: float,
         device_images: int) -> list[Row]:
    _progress(start, "loading Fashion-MNIST (Debian's dataset-fashion-mnist)")
    _, (x_test, y_test) = datasets.load("fashion_mnist")
    schemes = {"int8": "int8", low_bit: Scheme(weights=low_bit, first_last_int8=False)}
    float_model, rows = None, []
    for name, scheme in schemes.items():
        if float_model is None:
            _progress(start, f"training the float CNN ({epochs:g} epochs), then {name} QAT")
            result = pipeline.run("fashion_mnist", "cnn", scheme=scheme, epochs=epochs,
                                  qat_epochs=qat_epochs, verbose=0)
            float_model = result.float_model
            _progress(start, f"float accuracy {result.metrics['float_accuracy']:.4f}")
        else:
            _progress(start, f"{name} QAT (every weighted layer {name}), "
                             f"{qat_epochs:g} epoch(s) from the float CNN")
            result = pipeline.run("fashion_mnist", float_model, scheme=scheme, epochs=0,
                                  qat_epochs=qat_epochs, verbose=0)
        m = result.metrics
        _progress(start, f"{name}: QAT {m['qat_accuracy']:.4f}, TFLite {m['tflite_accuracy']:.4f}"
                         f" ({m['test_images']} images), {m['flatbuffer_bytes']} B flatbuffer")
        (tmp / name).mkdir()
        (tmp / name / "model.tflite").write_bytes(result.flatbuffer)
        rows.append(_firmware_row(tmp / name, name, result, x_test, y_test, device_images,
                                  start))
    return rows


def _firmware_row(folder: Path, name: str, result, x_test, y_test, count: int,
                  start: float) -> Row:
    from tflq.converters.tflite import io_quantization

    inputs = io_quantization(result.flatbuffer)[0].quantize(x_test[:count])
    project = micro_project.generate_project(result.flatbuffer, folder / "firmware",
                                             test_inputs=inputs, model_name=f"demo_{name}")
    _progress(start, f"{name}: building the FE310 firmware ({project.plan.note})")
    firmware_run.build(project)
    _progress(start, f"{name}: running {count} images in qemu-system-riscv32 -M sifive_e")
    device = firmware_run.run(project, build_first=False)
    if device.exit_code != 0:
        raise RuntimeError(f"{project}: firmware exited {device.exit_code}:\n{device.tail()}")
    host, reference = firmware_run.host_reference(project, inputs)
    exact = not firmware_run.mismatches(device.outputs, host)
    _progress(start, f"{name}: device {'equals' if exact else 'DIFFERS FROM'} {reference}")
    ram, arena_array = firmware_run.ram_sections(device.elf)
    return Row(
        scheme=name, tflite_accuracy=result.metrics["tflite_accuracy"],
        device_accuracy=float(np.mean(device.outputs.argmax(-1) == y_test[:count])),
        device_images=count, bit_exact=exact, weight_bytes=fb.weight_bytes(project.flatbuffer),
        flash_bytes=firmware_run.flash_bytes(device.elf) - int(inputs.nbytes),
        ram_used=device.arena_bytes + device.stack_bytes + ram - arena_array,
        instructions=device.instructions,
        kernels=packing.kernel_summary(project.packing) or project.plan.note)


def format_table(rows: list[Row], device_images: int) -> str:
    head = ("| weights | TFLite accuracy (10,000) | device accuracy "
            f"({device_images}) | device = host | weight bytes | flash (without the test "
            "images) | RAM used "
            "(of 16,384) | instructions / inference | kernels |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r.scheme} | {100 * r.tflite_accuracy:.2f}% | {100 * r.device_accuracy:.2f}% | "
            f"{'yes' if r.bit_exact else 'NO'} | {r.weight_bytes:,} | {r.flash_bytes:,} | "
            f"{r.ram_used:,} | {r.instructions:,} | {r.kernels} |")
    return "\n".join(lines)

