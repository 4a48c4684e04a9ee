"""Packed low-bit kernels vs TFLM's reference int8 kernels on the FE310, measured in QEMU.

Two tables, every row a generated firmware built with real TFLM and run in
`qemu-system-riscv32 -M sifive_e -icount shift=0` (minstret around Invoke(), mean over
8 inputs), every row checked bit for bit against TFLM's host interpreter on the int8
model. Every row also counts the bytes the inference reads from SPI flash and estimates
its time on silicon (``benchmarks/_firmware.py``: FLASH_NOTE):

1. Layers of realistic size (>= 32 channels): FC 128 -> 128 and CONV_2D 3x3, 16 -> 64
   channels on 8x8, weights drawn from each codebook (instruction counts do not depend
   on training); int8 DEPTHWISE_CONV_2D 3x3 with 32 and 64 channels on 8x8.
2. Fashion-MNIST MLP (784-50-10) and the demo CNN, trained: float, then QAT per scheme
   with every layer low-bit; TFLite int8 accuracy on the 10,000 test images.
3. DS-CNN, the depthwise-separable shape of keyword spotting (MLPerf Tiny's KWS), on its
   49x10 MFCC input, scaled from 64 to 32 channels to fit 16 KiB; untrained, its weights
   drawn from each codebook like the layers'.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz \\
        .venv/bin/python benchmarks/packed_kernels.py [--float_epochs 3 --qat_epochs 1]
Writes docs/benchmarks/packed_kernels.{md,json}, the markdown ending with issue 13's
targets computed from the rows (``targets``); ``--parts=dscnn`` measures one part and
keeps the others' rows from the JSON, ``--parts=`` only re-renders.
"""
import json
import tempfile
from pathlib import Path

from _firmware import FLASH_NOTE, flash_cells, int8_flatbuffer, measure  # sets sys.path, imports tflq first

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

import tflq  # noqa: E402
from tflq.converters import packing, tflm  # noqa: E402
from tflq import datasets, models, pipeline  # noqa: E402
from tflq.schemes import Scheme  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "packed_kernels"
FLAGS = flags.FLAGS
flags.DEFINE_integer("float_epochs", 3, "float training epochs (Fashion-MNIST models)")
flags.DEFINE_integer("qat_epochs", 1, "QAT epochs per scheme")
PARTS = ("layers", "depthwise", "dscnn", "models")
flags.DEFINE_list("parts", list(PARTS),
                  "which rows to measure; the others are kept from the committed JSON")

# int8 levels per codebook for the layer table (what the quantizers export).
LAYER_CODEBOOKS = {
    "binary (1 bit)": [-90, 90],
    "ternary (2 bits)": [-60, 0, 60],
    "log3 (3-bit codebook)": [-64, -32, -16, 0, 16, 32, 64],
    "fixed4 (4-bit planes)": list(range(-105, 106, 15)),
    "log4 / any 16 levels (4-bit codebook)": [-127, -64, -32, -16, -8, -4, -2, -1, 0, 1, 2, 4,
                                              8, 16, 32, 64],
}
MODEL_SCHEMES = ("log3", "ternary", "binary", "fixed4")
# generate_project(choose="smallest"): no layer switched to int8 rows where they are faster
LOW_BIT_EVERYWHERE = "low-bit kernel on every layer"
L = keras.layers


def layer_models(part):
    """Benchmark layers of a part ("layers", "depthwise", "dscnn"): name -> (Keras model,
    whether its weights are also packed)."""
    if part == "dscnn":
        keras.utils.set_random_seed(0)
        return {"DS-CNN 49x10, 32 channels": (models.build("ds_cnn", (49, 10, 1), 12), True)}
    if part == "layers":
        return {
            "FC 128->128": (keras.Sequential([L.InputLayer((128,)), L.Dense(128)]), True),
            "CONV_2D 3x3 16->64 on 8x8": (keras.Sequential([
                L.InputLayer((8, 8, 16)), L.Conv2D(64, 3, padding="same")]), True),
        }
    return {f"DEPTHWISE 3x3 x{c} on 8x8": (keras.Sequential([  # int8 only: as the packer
        L.InputLayer((8, 8, c)), L.DepthwiseConv2D(3, padding="same")]), False)  # leaves it
        for c in (32, 64)}


def layer_rows(workdir, part):
    rows = []
    for name, (model, packed) in layer_models(part).items():
        flatbuffer = int8_flatbuffer(model)
        variants = [("TFLM reference int8", flatbuffer, dict(kernels="reference", pack=False)),
                    ("tflq int8", flatbuffer, dict(kernels="tflq", pack=False))]
        if packed:  # the generator makes them int8 rows: a conv's copied into RAM, an
            # FC's in channel groups read in sequence
            variants.append(("tflq int8, generator default", flatbuffer, {}))
        for label, levels in LAYER_CODEBOOKS.items() if packed else ():
            fbuf = packing.with_weight_levels(flatbuffer, levels)
            if part != "dscnn":  # the layers show each low-bit kernel, and what RAM saves
                variants.append((label, fbuf, dict(choose="smallest")))
                variants.append((f"{label}, weights in flash", fbuf,
                                 dict(weights_in_ram=False, choose="smallest")))
            else:  # the model: the generator's per-layer choice, and the low-bit kernels
                variants.append((f"{label}, generator default", fbuf, {}))
                variants.append((f"{label}, {LOW_BIT_EVERYWHERE}", fbuf, dict(choose="smallest")))
        for i, (label, fbuf, generate) in enumerate(variants):
            row = measure(f"{part}{len(rows)}", fbuf, workdir, **generate)
            rows.append(dict(row, part=part, layer=name, variant=label + _in_ram(row)))
            print(f"{name:28s} {label:40s} {row['per_mac']:6.2f} instr/MAC "
                  f"{row['weight_bytes']:7,} B weights {row['flash_read_bytes']:9,.0f} B read "
                  f"{row['est_cycles']:11,.0f} est. cycles bit-exact={row['bit_exact']}")
    return rows


def model_rows(workdir):
    (x_train, y_train), (x_test, y_test) = datasets.load("fashion_mnist")
    rows = []
    for arch in ("mlp", "cnn"):
        keras.utils.set_random_seed(0)
        float_model = models.build(arch, x_train.shape[1:])
        models.compile_for_classification(float_model)
        float_model.fit(x_train, y_train, epochs=FLAGS.float_epochs, batch_size=64, verbose=0)
        variants = []
        for scheme in ("int8", *MODEL_SCHEMES):
            keras.utils.set_random_seed(0)
            qat = tflq.quantize_model(float_model, calibration_data=x_train[:2048],
                                      scheme=Scheme(weights=scheme, first_last_int8=False))
            models.compile_for_classification(qat)
            qat.fit(x_train, y_train, epochs=FLAGS.qat_epochs, batch_size=64, verbose=0)
            flatbuffer = tflq.convert(qat)
            accuracy = float(np.mean(pipeline.tflite_predict(flatbuffer, x_test).argmax(1)
                                     == y_test))
            if scheme == "int8":
                variants.append(("int8, TFLM reference kernels", flatbuffer, accuracy,
                                 dict(kernels="reference", pack=False)))
                variants.append(("int8, tflq kernels", flatbuffer, accuracy,
                                 dict(kernels="tflq", pack=False)))
                # int8 rows: the CNN's pools fused and convs copied into RAM, FCs in
                # channel groups read in sequence
                variants.append(("int8, tflq kernels, generator default", flatbuffer,
                                 accuracy, {}))
            else:
                variants.append((f"{scheme}, packed, generator default", flatbuffer,
                                 accuracy, {}))
                variants.append((f"{scheme}, packed, {LOW_BIT_EVERYWHERE}", flatbuffer,
                                 accuracy, dict(choose="smallest")))
        for label, flatbuffer, accuracy, generate in variants:
            inputs = tflq.io_quantization(flatbuffer)[0].quantize(x_test[:8])
            row = measure(f"{arch}{len(rows)}", flatbuffer, workdir, inputs=inputs, **generate)
            rows.append(dict(row, part="models", arch=arch, variant=label + _in_ram(row),
                             accuracy=accuracy))
            print(f"{arch:4s} {label:32s} acc={accuracy:.4f} {row['per_mac']:6.2f} instr/MAC "
                  f"{row['instructions']:,} instr {row['weight_bytes']:,} B "
                  f"{row['flash_read_bytes']:,.0f} B read {row['est_cycles']:,.0f} est. cycles "
                  f"RAM {row['ram_used']:,} B bit-exact={row['bit_exact']}")
    return rows


def _in_ram(row):
    """", weights in RAM" when the generator copied every packed layer's weights into RAM
    (", some weights in RAM" when only some)."""
    if not any(row["in_ram"]):
        return ""
    return ", weights in RAM" if all(row["in_ram"]) else ", some weights in RAM"


_LAYER_COLUMNS = [
    "| layer | kernel / weights | MACs | instructions | instr / MAC | weight bytes "
    "| flash read (x weight bytes) | non-seq. loads | est. cycles | RAM used | bit-exact |",
    "|---|---|---|---|---|---|---|---|---|---|---|"]


def _layer_lines(table):
    return [f"| {r['layer']} | {r['variant']} | {int(r['macs']):,} | {r['instructions']:,} | "
            f"{r['per_mac']:.2f} | {r['weight_bytes']:,} | {flash_cells(r)} | "
            f"{r['ram_used']:,} | {'yes' if r['bit_exact'] else 'NO'} |" for r in table]


def _row(rows, name, variant):
    """The row of layer or model ``name`` whose variant starts with ``variant``."""
    return next(r for r in rows if (r.get("layer") or r.get("arch")) == name
                and r["variant"].startswith(variant))


def _per_mac(rows, name, variant):
    return f"{_row(rows, name, variant)['per_mac']:.2f}"


def _profile_cell(row) -> str:
    return ", ".join(f"{name.split('(')[0]} {100 * n / row['instructions']:.0f}%"
                     for name, n in row.get("profile", {}).items())


# Issue 13's targets: (target, bound, measured cells from rows, met, cause of a miss).
def requantize_cost() -> float:
    """Instructions per output channel of tflq_requantize.h: the "now" row that
    benchmarks/requantize_cost.py measured for docs/benchmarks/requantize.md."""
    table = (OUT.parent / "requantize.md").read_text()
    for line in table.splitlines():
        if line.startswith("| now:"):
            return float(line.split("|")[2])
    raise SystemExit("docs/benchmarks/requantize.md has no '| now:' row")


def targets(rows) -> list[str]:
    fc, conv, cnn = "FC 128->128", "CONV_2D 3x3 16->64 on 8x8", "cnn"
    dw = ("DEPTHWISE 3x3 x32 on 8x8", "DEPTHWISE 3x3 x64 on 8x8")

    def both(variant):
        return [float(_per_mac(rows, fc, variant)), float(_per_mac(rows, conv, variant))]

    def pair(values):
        return " / ".join(f"{v:.2f}" for v in values)

    int8, builtin = both("tflq int8, generator default"), both("tflq int8")
    binary, ternary = both("binary"), both("ternary")
    low = [v for label in ("log3", "fixed4", "log4") for v in both(label)]
    dws = [float(_per_mac(rows, d, "tflq int8")) for d in dw]
    cnn_int8 = _row(rows, cnn, "int8, tflq kernels, generator default")
    twins = {s: _row(rows, cnn, f"{s}, packed, generator default") for s in MODEL_SCHEMES}
    slower = [s for s, r in twins.items() if r["per_mac"] > cnn_int8["per_mac"] + 0.005]
    reference = _row(rows, cnn, "int8, TFLM reference kernels")["ram_used"]
    ratios = []
    for arch in ("mlp", "cnn"):
        base = _row(rows, arch, "int8, tflq kernels, generator default")
        base_bytes = _row(rows, arch, "int8, TFLM reference kernels")["weight_bytes"]
        for s in MODEL_SCHEMES:
            packed = _row(rows, arch, f"{s}, packed, generator default")
            smallest = _row(rows, arch, f"{s}, packed, {LOW_BIT_EVERYWHERE}")
            ratios.append((f"{arch} {s}", packed["est_cycles"] / base["est_cycles"],
                           smallest["weight_bytes"] / base_bytes))
    beaten = [n for n, t, b in ratios if t <= b]
    requantization = requantize_cost()
    table = [
        ("int8 FC / CONV, instructions / MAC (the generator's int8 rows; tflq's kernel on "
         "TFLite's tensors: " + pair(builtin) + ")", "<= 3.5", pair(int8), max(int8) <= 3.5,
         "8-channel loop: per 64 MACs 8 input + 64 weight byte loads, 64 mul, 64 add and 3 "
         "for the loop (3.17 per MAC), then about 36 instructions per output channel "
         "(requantization, clamp, constants); CONV_2D adds its patch gathering and the "
         "staged blocks (profile above)"),
        ("int8 DEPTHWISE 3x3 (>= 32 channels)", "<= 5", pair(dws), max(dws) <= 5,
         "its interior loop takes 38 instructions per output (9 MACs): 18 mul / add, 3 "
         "loads and 3 pointer steps, 8 for requantization and offset, 2 clamp, store, 2 "
         "loop, 1 reload; each 8-output line adds about 85 (its first position, its "
         "zero-point tail, pointers), the edge lines a call each (profile above)"),
        ("binary weights", "<= 1.6", pair(binary), max(binary) <= 1.6,
         "bit-plane kernel: two 16-entry table lookups and adds per 8 inputs, tables of "
         "subset sums rebuilt per 4 inputs and position"),
        ("ternary", "<= 2.5", pair(ternary), max(ternary) <= 2.5, "the same kernel, two planes"),
        ("3-4-bit planes, log3, log4, codebooks", "<= 3.5, below int8",
         f"{min(low):.2f} - {max(low):.2f}", max(low) <= 3.5,
         "a table load per weight (codebooks), four planes (fixed4); the generator runs "
         "these layers on int8 rows where the RAM allows (DS-CNN log3: "
         f"{_per_mac(rows, 'DS-CNN 49x10, 32 channels', 'log3 (3-bit codebook), generator')}"
         " against "
         f"{_per_mac(rows, 'DS-CNN 49x10, 32 channels', 'log3 (3-bit codebook), low-bit')})"),
        ("whole demo CNN, tflq int8", "<= 5.0", f"{cnn_int8['per_mac']:.2f}",
         cnn_int8["per_mac"] <= 5,
         "its first conv has 9 MACs per output value (1 input channel, 3x3), so each "
         "output's requantization, fused max-pool and patch cost as much as its MACs "
         "(profile above: " + _profile_cell(cnn_int8) + ")"),
        ("whole demo CNN, packed, below its int8 twin", "below " + f"{cnn_int8['per_mac']:.2f}",
         ", ".join(f"{s} {r['per_mac']:.2f}" for s, r in twins.items()),
         all(r["per_mac"] < cnn_int8["per_mac"] for r in twins.values()),
         ", ".join(s for s, r in twins.items() if abs(r["per_mac"] - cnn_int8["per_mac"])
                   < 0.005) + " run every layer on int8 rows, the faster kernel (equal, not "
         "below); " + (f"{', '.join(slower)} above: the estimate misses its 16-channel "
                       "conv's table cost" if slower else "none above")),
        ("requantization per output channel (docs/benchmarks/requantize.md, "
         "benchmarks/requantize_cost.py)", "<= 20", f"{requantization:.2f}",
         requantization <= 20, ""),
        ("RAM used <= int8 with TFLM's reference kernels (demo CNN)", f"<= {reference:,}",
         f"{cnn_int8['ram_used']:,} (int8 default)", cnn_int8["ram_used"] <= reference,
         "weights copied into RAM, chosen because the 16 KiB budget allows it"),
        ("estimated silicon time below the int8 twin's by the weight-bytes ratio",
         "time ratio <= bytes ratio", ", ".join(f"{n} {t:.2f} vs {b:.2f}" for n, t, b in ratios),
         len(beaten) == len(ratios),
         "met where packed weights fit RAM and int8 rows do not (" + ", ".join(beaten)
         + "); elsewhere both keep their weights in the same place (RAM, or flash read in "
         "sequence) and instructions decide"),
    ]
    lines = ["", "## Issue 13's targets, from the rows above", "",
             "| target | bound | measured | met | cause of a miss |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {b} | {m} | {'yes' if ok else 'no'} | {'' if ok else c} |"
              for t, b, m, ok, c in table]
    return lines


# Rows whose instructions the markdown breaks down by function (layer, variant prefix).
PROFILED = (("CONV_2D 3x3 16->64 on 8x8", "tflq int8, generator default"),
            ("DEPTHWISE 3x3 x32 on 8x8", "tflq int8"),
            ("DS-CNN 49x10, 32 channels", "tflq int8, generator default"),
            ("cnn", "int8, tflq kernels, generator default"),
            ("cnn", f"binary, packed, {LOW_BIT_EVERYWHERE}"))
# What tflq's kernel functions (micro/kernels/layer_eval.c) do.
FUNCTIONS = {
    "int8_vector": "int8 rows: dot products, requantization",
    "int8_vector2": "int8 rows, two CONV_2D positions per pass",
    "int8_rest": "int8 rows past the 8-channel groups",
    "vector_layer": "bit-plane / codebook lookups, inlined",
    "planes_tables": "bit-plane subset-sum tables",
    "table_vector": "bit-plane / codebook tables and lookups",
    "conv_channels": "CONV_2D patch gathering",
    "emit": "fused max-pool",
    "dw3x3_plane": "DEPTHWISE 3x3, a channel's interior lines",
    "dw3x3_edge": "DEPTHWISE 3x3, a line at the input's edge",
    "tflq_layer_eval": "layer set-up, DEPTHWISE 3x3 channel loop",
}


def profile_lines(rows) -> list[str]:
    """Where the instructions of the PROFILED rows go, per function (the QEMU plugin's
    profile, per inference; functions under 1% left out)."""
    lines = ["", "## Where the instructions go", "",
             "Per inference, by function (the flash-read plugin's `profile=`, the same run as "
             "the row's; functions under 1% of the row left out).", "",
             "| row | function | instructions | share |", "|---|---|---|---|"]
    for layer, variant in PROFILED:
        r = _row(rows, layer, variant)
        if not r.get("profile"):
            continue
        for name, n in r["profile"].items():
            what = FUNCTIONS.get(name.split("(")[0], "")
            lines.append(f"| {layer}, {r['variant']} | `{name}`{' (' + what + ')' if what else ''}"
                         f" | {n:,.0f} | {100 * n / r['instructions']:.1f}% |")
    return lines


def render(layer_table, dscnn_table, model_table):
    root = tflm.source_root()
    lines = [
        "# Packed low-bit kernels on the FE310 (QEMU)",
        "",
        "Written by `benchmarks/packed_kernels.py`. Every row is a firmware generated by",
        "`converters/micro_project.py`, built with TFLM "
        f"{tflm.local_commit(root)} (rv32imac, gcc 12.2, kernels -O2) and run on",
        "`qemu-system-riscv32 -M sifive_e -icount shift=0`; instructions are minstret around",
        "`Invoke()`, the mean over 8 inputs, and every row's outputs equal the TFLM host",
        "interpreter's on the int8 model (*bit-exact*). QEMU models no flash wait states;",
        "the flash columns count what silicon would pay for them.",
        "",
        *FLASH_NOTE,
        "",
        "Packed weights are copied into RAM at AllocateTensors where the RAM left allows",
        "(*weights in RAM*, counted in *RAM used*); *weights in flash* rows are the same",
        "firmware with `weights_in_ram=False`. The layer rows run each layer on its low-bit",
        "kernel (`choose=\"smallest\"`). *Generator default* rows are what",
        "`generate_project` picks per layer (`choose=\"fastest\"`): int8 rows where they take",
        "fewer instructions than the low-bit kernel and the firmware's estimated cycles",
        "(`converters/layer_cost.py`) go down within the RAM; *low-bit kernel on every",
        "layer* rows are the same model with `choose=\"smallest\"`.",
        "",
        "*Weight bytes*: the FC / conv weight and bias tensors of the int8 model, or the",
        "TQP1 blobs (b-bit weights + codebook + per-channel bias, multiplier and shift) that",
        "replace them. *RAM used*: arena used (`arena_used_bytes()`) + stack high-water +",
        "`.data`/`.bss` besides the arena, all measured on the device.",
    ]
    if layer_table:
        lines += ["", "## Layers of realistic size (weights drawn from each codebook)", "",
                  *_LAYER_COLUMNS, *_layer_lines(layer_table)]
    if dscnn_table:
        lines += ["", "## DS-CNN (keyword spotting's shape: 49x10 input, 32 channels, "
                  "untrained, weights drawn from each codebook)", "",
                  *_LAYER_COLUMNS, *_layer_lines(dscnn_table),
                  "", "How the generator packed each layer:", ""]
        lines += [f"- {r['variant']}: " + "; ".join(r["packing"])
                  for r in dscnn_table if r["packing"]]
    if model_table:
        lines += ["", "## Fashion-MNIST models (QAT, every layer low-bit)", "",
                  "| model | weights, kernels | TFLite accuracy | MACs | instructions / inference "
                  "| instr / MAC | weight bytes | flash read (x weight bytes) | non-seq. loads "
                  "| est. cycles | flash (whole image) | RAM used (arena + stack + static) "
                  "| bit-exact |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in model_table:
            lines.append(
                f"| {r['arch']} | {r['variant']} | {r['accuracy']:.4f} | {int(r['macs']):,} | "
                f"{r['instructions']:,} | {r['per_mac']:.2f} | {r['weight_bytes']:,} | "
                f"{flash_cells(r)} | {r['flash']:,} | {r['ram_used']:,} ({r['arena_used']:,} + {r['stack_used']:,} "
                f"+ {r['static']:,}) | {'yes' if r['bit_exact'] else 'NO'} |")
        lines += ["", "How the generator packed each layer:", ""]
        for r in model_table:
            if "packed" in r["variant"] or "generator default" in r["variant"]:
                lines += [f"- {r['arch']} {r['variant']}: " + "; ".join(r["packing"])]
    if layer_table and model_table and dscnn_table:
        lines += profile_lines(layer_table + dscnn_table + model_table)
        lines += targets(layer_table + dscnn_table + model_table)
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    kept = []
    if set(FLAGS.parts) != set(PARTS):
        kept = [r for r in json.loads(OUT.with_suffix(".json").read_text())
                if r["part"] not in FLAGS.parts]
    measured = {}
    with tempfile.TemporaryDirectory(prefix="tflq-packed-") as tmp:
        for part in FLAGS.parts:
            measured[part] = (model_rows(Path(tmp)) if part == "models"
                              else layer_rows(Path(tmp), part))
    rows = {part: [r for r in kept if r["part"] == part] or measured.get(part, [])
            for part in PARTS}
    text = render(rows["layers"] + rows["depthwise"], rows["dscnn"], rows["models"])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".md").write_text(text)
    OUT.with_suffix(".json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "readme"} for part in rows.values() for r in part],
        indent=1, default=lambda v: v.item() if hasattr(v, "item") else float(v)) + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
