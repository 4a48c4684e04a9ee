"""Cost of tflq's demo models on the FE310 with TFLM's reference kernels, measured in QEMU.

For the Fashion-MNIST-shaped demo CNN and MLP (tflq.models, random-init weights:
instruction counts of int8 reference kernels barely depend on the weights), this
generates a firmware project, builds it with real TFLM, runs it in QEMU with exact
instruction counting (-icount shift=0), and records flash, RAM and instructions.

    TFLQ_TFLM_ROOT=/work/deps TFLQ_TFLM_COMMIT=90b983c2 \
        .venv/bin/python benchmarks/micro_reference.py   # writes docs/benchmarks/micro_reference.md
"""
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tflq  # noqa: E402,F401  -- before TensorFlow
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from converters import flatbuffer as fb, micro_project, tflm, tflm_host, toolchain  # noqa: E402
from tflq import models  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "micro_reference.md"
NUM_INPUTS = 8


def int8_flatbuffer(model, seed=0) -> bytes:
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


def measure(name: str, flatbuffer: bytes, workdir: Path) -> dict:
    inputs = np.random.default_rng(1).integers(
        -128, 128, (NUM_INPUTS, *fb.tensor(fb.load(flatbuffer),
                                           fb.load(flatbuffer).subgraphs[0].inputs[0]).shape[1:]),
        dtype=np.int8)
    project = micro_project.generate_project(flatbuffer, workdir / name, test_inputs=inputs)
    tflm.make(project, "qemu-elf")
    elf = project / "build/hifive1-reva-qemu/firmware.elf"
    run = toolchain.run_qemu(elf, timeout_s=600)
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
    budget = micro_project.memory_budget(flatbuffer)
    ram_static = sum(sections.get(s, 0) for s in (".data", ".tdata", ".tbss", ".bss"))
    n_macs = macs(flatbuffer)
    instructions = int(stats["instructions_per_inference"])
    return {
        "model": name, "ops": ", ".join(micro_project.model_ops(flatbuffer)), "macs": n_macs,
        "instructions": instructions, "per_mac": instructions / n_macs,
        "flash_code": sections[".init"] + sections[".text"], "model_bytes": len(flatbuffer),
        "arena_used": int(stats["arena_bytes"]), "arena_reserved": budget.arena,
        "host_arena": budget.host_arena, "stack_used": int(stats["stack_bytes"]),
        "stack_reserved": budget.stack, "static": ram_static - budget.arena,
        "ram_total": budget.stack + ram_static, "bit_exact": exact,
    }


def main():
    keras.utils.set_random_seed(0)
    built = {"cnn": models.build("cnn", (28, 28, 1)), "mlp": models.build("mlp", (28, 28, 1))}
    with tempfile.TemporaryDirectory(prefix="tflq-bench-") as tmp:
        rows = [measure(name, int8_flatbuffer(m), Path(tmp)) for name, m in built.items()]
    root = tflm.source_root()
    lines = [
        "# TFLM reference kernels on the FE310 (QEMU)",
        "",
        "Written by `benchmarks/micro_reference.py`. tflq's demo models for 28x28x1 input",
        "(`tflq.models.build`, random-init weights, int8 via tf.lite's converter), each",
        "as a generated firmware project (`converters/micro_project.py`) built with TFLM",
        f"{tflm.local_commit(root)} reference kernels (rv32imac, gcc 12.2, kernels -O2,",
        "framework -Os) and run on `qemu-system-riscv32 -M sifive_e -icount shift=0`,",
        "where `minstret` counts retired instructions exactly. Instructions are the mean",
        f"over {NUM_INPUTS} random int8 inputs of minstret around `Invoke()`. QEMU models no",
        "flash wait states or caches: these are instruction counts, not times.",
        "",
        "| model | ops | MACs | instructions / inference | instr / MAC | bit-exact vs host |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['ops']} | {r['macs']:,} | {r['instructions']:,} | "
              f"{r['per_mac']:.1f} | {'yes' if r['bit_exact'] else 'NO'} |" for r in rows]
    lines += [
        "",
        "Flash: `.init` + `.text` from `riscv64-unknown-elf-size -A` (TFLM, the app,",
        "picolibc and all read-only data, the model included); *code* is that minus the model.",
        "RAM (16 KiB): the arena array is the generator's 32-bit upper bound (the 64-bit",
        "host interpreter's figure); *used* is `arena_used_bytes()` on the device; stack",
        "*used* is the painted high-water mark of what the linker reserves",
        "(`micro_project.stack_reservation`); static is `.data` + `.bss` besides the arena.",
        "",
        "| model | flash | code | model | arena used / array (host 64-bit) | stack used / reserved "
        "| static | RAM total |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['model']} | {r['flash_code']:,} B | {r['flash_code'] - r['model_bytes']:,} B | "
              f"{r['model_bytes']:,} B | "
              f"{r['arena_used']:,} / {r['arena_reserved']:,} B ({r['host_arena']:,} B) | "
              f"{r['stack_used']:,} / {r['stack_reserved']:,} B | {r['static']:,} B | "
              f"{r['ram_total']:,} B of 16,384 |" for r in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
