"""Cost of tflq's demo models on the FE310 with TFLM's reference kernels, measured in QEMU.

For the Fashion-MNIST-shaped demo CNN and MLP (tflq.models, random-init weights:
instruction counts of int8 reference kernels barely depend on the weights), this
generates a firmware project, builds it with real TFLM, runs it in QEMU with exact
instruction counting (-icount shift=0), and records flash, RAM and instructions.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz \
        .venv/bin/python benchmarks/micro_reference.py   # writes docs/benchmarks/micro_reference.md
"""
import tempfile
from pathlib import Path

from _firmware import NUM_INPUTS, int8_flatbuffer, measure  # sets sys.path, imports tflq first

import tf_keras as keras  # noqa: E402

from tflq.converters import tflm  # noqa: E402
from tflq import models  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "micro_reference.md"


def main():
    keras.utils.set_random_seed(0)
    built = {"cnn": models.build("cnn", (28, 28, 1)), "mlp": models.build("mlp", (28, 28, 1))}
    with tempfile.TemporaryDirectory(prefix="tflq-bench-") as tmp:
        rows = [measure(name, int8_flatbuffer(m), Path(tmp), kernels="reference", pack=False)
                for name, m in built.items()]
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
    lines += [f"| {r['model']} | {r['flash']:,} B | {r['flash'] - r['model_bytes']:,} B | "
              f"{r['model_bytes']:,} B | "
              f"{r['arena_used']:,} / {r['arena_reserved']:,} B ({r['host_arena']:,} B) | "
              f"{r['stack_used']:,} / {r['stack_reserved']:,} B | {r['static']:,} B | "
              f"{r['ram_total']:,} B of 16,384 |" for r in rows]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
