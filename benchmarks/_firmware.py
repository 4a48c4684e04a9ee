"""Shared by the firmware benchmarks: build a generated project with real TFLM, run it in
QEMU (-icount shift=0: minstret counts retired instructions exactly) and measure it.

    TFLQ_TFLM_ROOT=/work/deps TFLQ_TFLM_COMMIT=90b983c2 .venv/bin/python benchmarks/<script>.py
"""
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tflq  # noqa: E402,F401  -- before TensorFlow
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from converters import firmware_kernels, micro_project, tflm, tflm_host, toolchain  # noqa: E402
from converters import flatbuffer as fb  # noqa: E402

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


def weight_bytes(flatbuffer: bytes) -> int:
    """Bytes of FC / conv weights and biases (int8 tensors) or packed blobs in the model."""
    model = fb.load(flatbuffer)
    sg = model.subgraphs[0]
    total = 0
    for op in sg.operators:
        if fb.op_name(model, op) in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D",
                                     "TFLQ_PACKED"):
            for i in op.inputs[1:]:
                data = model.buffers[sg.tensors[i].buffer].data if i >= 0 else None
                total += 0 if data is None else len(data)
    return total


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
    tflm.make(project, "qemu-elf")
    elf = project / "build/hifive1-reva-qemu/firmware.elf"
    run = toolchain.run_qemu(elf, timeout_s=900)
    if run.exit_code != 0:
        raise RuntimeError(f"{name}: firmware exited {run.exit_code}:\n{run.uart_text[-1500:]}")
    got = np.array([list(map(int, m.group(1).split()))
                    for m in re.finditer(r"^OUTPUT \d+ (.*)$", run.uart_text, re.M)])
    exact = np.array_equal(got, tflm_host.predict(flatbuffer, inputs).reshape(len(inputs), -1))
    stats = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^STATS .*$", run.uart_text, re.M).group(0)))
    tc = toolchain.find_toolchain()
    sections = dict((m.group(1), int(m.group(2))) for m in re.finditer(
        r"^(\.\w+)\s+(\d+)", subprocess.run([tc.tool("size"), "-A", str(elf)], capture_output=True,
                                            text=True, check=True).stdout, re.M))
    firmware_model = bytes(micro_project_model(project))
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
    }


def micro_project_model(project: Path) -> bytes:
    """The flatbuffer a generated project embeds (model_data.cc's array)."""
    text = (project / "model_data.cc").read_text()
    body = re.search(r"g_model_data\[\] = \{\n(.*?)\n\};", text, re.S).group(1)
    return bytes(int(v, 16) for v in re.findall(r"0x[0-9a-f]{2}", body))
