"""Low-bit weights x low-bit activations on the FE310: the bit-serial kernel, measured in QEMU.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz .venv/bin/python benchmarks/bit_serial.py

Writes docs/benchmarks/bit_serial.{md,json}.

The layers of docs/benchmarks/packed_kernels.md (FC 128 -> 128, CONV_2D 3x3 16 -> 64 on
8x8), now reading k-bit activation codes. A kernel only gets such an input from a layer
whose output is clamped to those codes, so each row is two firmwares: the layer behind
a producer (a ReLU layer, FC 128 -> 128 or CONV_2D 1x1 16 -> 16, whose output tensor
holds the 2^k codes 128 - 2^k .. 127) and the producer alone. The layer's
instructions are the difference of the two (minstret around Invoke(), -icount shift=0,
mean over 8 inputs); both firmwares are bit-exact with the TFLM host reference on the
int8 model. The layer's own output is k-bit too (k <= 2: thresholds instead of
requantization). Weights are drawn from each codebook (counts do not depend on
training); int8 rows are the same pair with int8 weights on tflq's int8 kernel.
"""
import contextlib
import json
import tempfile
from pathlib import Path

from _firmware import int8_flatbuffer, measure  # sets sys.path, imports tflq first

import tf_keras as keras  # noqa: E402

from tflq.converters import flatbuffer as fb, packed_format, packing  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "bit_serial"
L = keras.layers

ROWS = [  # label, weight levels (int8), activation bits, force the bit-serial kernel
    ("W1A1: binary weights, binary activations", [-90, 90], 1, False),
    ("W1A2: binary weights, 2-bit activations", [-90, 90], 2, False),
    ("W2A2: ternary weights, 2-bit activations", [-60, 0, 60], 2, False),
    ("W4A4: 4-bit fixed-point weights, 4-bit activations", list(range(-105, 106, 15)), 4, False),
    ("W4A4, bit-serial forced", list(range(-105, 106, 15)), 4, True),
    ("int8 weights, 2-bit activations (tflq int8 kernel)", None, 2, False),
]


@contextlib.contextmanager
def bit_serial_forced(force: bool):
    """The packer's cost table with the bit-serial kernel free, so that it is chosen."""
    table = packed_format._PER_MAC[packed_format.FMT_BITSERIAL]
    saved = dict(table)
    if force:
        table.update({k: 0.0 for k in table})
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def models():
    return {
        "FC 128->128": ([L.InputLayer((128,)), L.Dense(128, activation="relu")],
                        [L.Dense(128, activation="relu")], 128 * 128),
        "CONV_2D 3x3 16->64 on 8x8": (
            [L.InputLayer((8, 8, 16)), L.Conv2D(16, 1, activation="relu")],
            [L.Conv2D(64, 3, padding="same", activation="relu")], 8 * 8 * 64 * 9 * 16),
    }


def with_code_outputs(flatbuffer: bytes, bits: int) -> bytes:
    """Every FC / CONV_2D output (all fused ReLU) holds the 2^bits codes 128 - 2^bits .. 127."""
    model = fb.load(flatbuffer)
    sg = model.subgraphs[0]
    for op in sg.operators:
        if fb.op_name(model, op) in ("FULLY_CONNECTED", "CONV_2D"):
            q = sg.tensors[op.outputs[0]].quantization
            q.zeroPoint = [packing.input_low(bits)]
            q.scale = [float(q.scale[0]) * 255.0 / (2 ** bits - 1)]  # the same range in 2^k codes
    return fb.dump(model)


def main():
    rows = []
    with tempfile.TemporaryDirectory(prefix="tflq-bitserial-") as tmp:
        for layer, (producer, consumer, macs) in models().items():
            pair = int8_flatbuffer(keras.Sequential(producer + consumer))
            alone = int8_flatbuffer(keras.Sequential(producer))
            for label, levels, bits, force in ROWS:
                fbs = [with_code_outputs(f, bits) for f in (pair, alone)]
                if levels is not None:
                    fbs = [packing.with_weight_levels(f, levels) for f in fbs]
                generate = {} if levels is not None else dict(pack=False, kernels="tflq")
                with bit_serial_forced(force):
                    both, base = (measure(f"r{len(rows)}{i}", f, Path(tmp), **generate)
                                  for i, f in enumerate(fbs))
                instructions = both["instructions"] - base["instructions"]
                kernel = [line for line in both["readme"].splitlines()
                          if line.startswith("- ") and ("packed as" in line or "stays" in line)]
                if force and kernel:  # the estimate the packer saw was the forced 0
                    kernel[-1] = kernel[-1].replace("~0.00 instructions/MAC", "forced")
                row = {"layer": layer, "variant": label, "macs": macs,
                       "instructions": instructions, "per_mac": instructions / macs,
                       "weight_bytes": both["weight_bytes"] - base["weight_bytes"],
                       "ram_used": both["ram_used"], "kernel": kernel[-1][2:] if kernel else "",
                       "bit_exact": both["bit_exact"] and base["bit_exact"]}
                rows.append(row)
                print(f"{layer:28s} {label:52s} {row['per_mac']:5.2f} instr/MAC "
                      f"bit-exact={row['bit_exact']}  {row['kernel']}", flush=True)
    lines = ["# Bit-serial kernels: low-bit weights x low-bit activations on the FE310 (QEMU)", "",
             "Written by `benchmarks/bit_serial.py` (its docstring has the method: each row is "
             "the difference of two firmwares, the layer behind a producer of k-bit codes and "
             "the producer alone). Instructions: minstret around `Invoke()`, "
             "`qemu-system-riscv32 -M sifive_e -icount shift=0`, mean over 8 inputs; both "
             "firmwares bit-exact with the TFLM host reference. Reference points "
             "(`docs/benchmarks/packed_kernels.md`, int8 inputs): tflq int8 3.93 / 3.95, "
             "binary weights 2.58 / 2.86 instructions per MAC. The generator chooses the "
             "bit-serial kernel only where its measured cost beats the bit-plane kernel's "
             "(`converters/packed_format.py`, `estimated_per_mac`, whose table holds these "
             "rows' FC numbers): W4A4 takes 16 popcounts per word pair, so it keeps the "
             "bit-plane kernel; the forced row measures the bit-serial one.", "",
             "| layer | weights x activations | MACs | instructions | instr / MAC | weight bytes "
             "| RAM used (pair) | kernel the generator chose | bit-exact |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['variant']} | {r['macs']:,} | {r['instructions']:,} | "
              f"{r['per_mac']:.2f} | {r['weight_bytes']:,} | {r['ram_used']:,} | {r['kernel']} | "
              f"{'yes' if r['bit_exact'] else 'NO'} |" for r in rows]
    text = "\n".join(lines) + "\n"
    OUT.with_suffix(".md").write_text(text)
    OUT.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main()
