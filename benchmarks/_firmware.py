"""Shared by the firmware benchmarks: build a generated project with real TFLM, run it in
QEMU (-icount shift=0: minstret counts retired instructions exactly) and measure it.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz .venv/bin/python benchmarks/<script>.py

(or TFLQ_TFLM_ROOT=<folder>; converters/tflm_sources.py).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tflq  # noqa: E402,F401  -- before TensorFlow
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tflq.converters import firmware_kernels, firmware_run, flash_reads, micro_project  # noqa: E402,E501
from tflq.converters import tflm_host  # noqa: E402
from tflq.converters import flatbuffer as fb  # noqa: E402

NUM_INPUTS = 8


def int8_flatbuffer(model, seed=0) -> bytes:
    """tf.lite's full-integer conversion of a Keras model, calibrated on uniform [0, 1)."""
    data = np.random.default_rng(seed).uniform(0, 1, (64, *model.input_shape[1:]))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def macs(flatbuffer: bytes) -> int:
    """Multiply-accumulates of one inference (conv, depthwise conv, fully connected)."""
    model = fb.load(flatbuffer)
    total = 0
    for op in model.subgraphs[0].operators:
        name = fb.op_name(model, op)
        out = fb.tensor(model, op.outputs[0]).shape
        weights = fb.tensor(model, op.inputs[1]).shape if len(op.inputs) > 1 else None
        if name == "CONV_2D":  # weights: (out_c, kh, kw, in_c)
            total += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # weights: (1, kh, kw, out_c)
            total += int(np.prod(out)) * weights[1] * weights[2]
        elif name == "FULLY_CONNECTED":  # weights: (units, inputs)
            total += int(np.prod(out)) * weights[1]
    return total


weight_bytes = fb.weight_bytes


def measure(name: str, flatbuffer: bytes, workdir: Path, inputs=None, **generate) -> dict:
    """Generates (``generate``: pack, kernels, ...), builds, runs and measures one firmware.

    ``flatbuffer`` is the int8 model; the result is checked bit for bit against the TFLM
    host interpreter on it."""
    model = fb.load(flatbuffer)
    if inputs is None:
        shape = fb.tensor(model, model.subgraphs[0].inputs[0]).shape[1:]
        inputs = np.random.default_rng(1).integers(-128, 128, (NUM_INPUTS, *shape), dtype=np.int8)
    project = micro_project.generate_project(flatbuffer, workdir / name, test_inputs=inputs,
                                             **generate)
    run = firmware_run.run(project, timeout_s=900, flash=True, profile=True)
    if run.exit_code != 0:
        raise RuntimeError(f"{name}: firmware exited {run.exit_code}:\n{run.tail()}")
    # Bit-exact twice: the host build of the same model and kernels, and TFLM's
    # reference kernels on the int8 model.
    firmware_run.check_bit_exact(run, inputs)
    exact = not firmware_run.mismatches(run.outputs, tflm_host.predict(flatbuffer, inputs))
    stats = run.stats
    elf = run.elf
    sections = firmware_run.elf_sections(elf)
    firmware_model = (project / firmware_run.MODEL_FILE).read_bytes()
    plan = firmware_kernels.plan(firmware_model, generate.get("kernels", "tflq"))
    budget = micro_project.memory_budget(flatbuffer, firmware_model, plan)
    ram_static = sum(sections.get(s, 0) for s in (".data", ".tdata", ".tbss", ".bss"))
    n_macs = macs(flatbuffer)
    instructions = int(stats["instructions_per_inference"])
    return {
        "model": name, "ops": ", ".join(micro_project.model_ops(firmware_model)),
        "macs": n_macs, "instructions": instructions, "per_mac": instructions / n_macs,
        "flash": sections[".init"] + sections[".text"] + sections.get(".data", 0),
        "model_bytes": len(firmware_model), "weight_bytes": weight_bytes(firmware_model),
        "arena_used": int(stats["arena_bytes"]), "arena_reserved": budget.arena,
        "host_arena": budget.host_arena, "stack_used": int(stats["stack_bytes"]),
        "stack_reserved": budget.stack, "static": ram_static - budget.arena,
        "ram_total": budget.stack + ram_static,
        "ram_used": int(stats["arena_bytes"]) + int(stats["stack_bytes"]) + ram_static - budget.arena,
        "bit_exact": exact, "readme": (project / "README.md").read_text(),
        "packing": project.packing_lines,
        "in_ram": [p.in_ram for p in project.packing if p.encoding],
        # Data loads from SPI flash per inference (converters/flash_reads.py) and the
        # silicon time they imply.
        "flash_read_bytes": run.flash.bytes, "flash_seq_bytes": run.flash.seq_bytes,
        "flash_nonseq_loads": run.flash.nonseq_loads,
        "est_cycles": run.flash.silicon_cycles(instructions),
        # Where an inference's instructions go: the functions above 1%, per inference.
        "profile": {f: n / run.flash.windows for f, n in run.profile.items()
                    if n >= 0.01 * instructions * run.flash.windows},
    }


FLASH_NOTE = [
    "*Flash read*: bytes the inference loads from SPI flash (weights and constants), counted",
    "by the QEMU plugin `micro/qemu/flash_reads.c`; *non-seq.*: loads that do not continue",
    "the previous flash load, each paying the SPI command and address. *Est. cycles*: "
    + flash_reads.ESTIMATE + ".",
]


def flash_cells(row: dict, weights: int | None = None) -> str:
    """Table cells: flash bytes read (and per weight byte), non-seq. loads, est. cycles."""
    weights = row["weight_bytes"] if weights is None else weights
    return (f"{row['flash_read_bytes']:,.0f} ({row['flash_read_bytes'] / weights:.2f}x) | "
            f"{row['flash_nonseq_loads']:,.0f} | {row['est_cycles']:,.0f}")
