"""Low-bit activations on Fashion-MNIST: nnabla's families, QNN's W1A2 and the W4A4 /
W2A2 / W1A1 targets, each as TFLite accuracy and as FE310 firmware.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz \
        .venv/bin/python benchmarks/activations.py --float_epochs=5 --qat_epochs=3

Writes docs/benchmarks/activations.{md,json}.

Model: tflq's demo CNN (conv 8 -> pool -> conv 16 -> pool -> dense 10). Every scheme
keeps its defaults: the first conv and the logits layer have int8 weights, the logits
int8 activations; so the middle conv has the scheme's weights, and both convs' outputs
the scheme's activations. Each scheme starts from the same float model, calibrates on
1,000 training images, fine-tunes with QAT (INQ with its callback) and converts.
Accuracy: the TFLite model (tf.lite reference kernels) on the 10,000 test images.
Codes: the most distinct int8 values any low-bit activation tensor takes over the test
images, on the TFLM host reference. Device columns: the firmware in QEMU (-icount
shift=0, minstret), packed weights and tflq kernels, bit-exact with the host reference
on 8 test images; "arena" is the measured arena in use. The generator stores low-bit
activations between packed layers as k-bit codes and fuses each max-pool into the conv
before it (converters/activation_plan.py); "arena, int8 activations" is the same model's
firmware with pack_activations=False, and the int8 row is also measured without fused
pools (fuse_pools=False: TFLM's own layout, the firmware before packed activations).
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))

from _firmware import measure  # noqa: E402
import numpy as np  # noqa: E402
import tf_keras as keras  # noqa: E402

import tflq  # noqa: E402
from tflq import datasets, inq, models, pipeline, report, schemes  # noqa: E402
from tflq.converters import flatbuffer as fb, tflm_host  # noqa: E402
from tflq.converters.tflite import low_bit_activations  # noqa: E402
from tflq.schemes import Scheme  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "activations.md"

ROWS = [  # (label, scheme, what it is)
    ("int8", "int8", "Jacob et al. (reference)"),
    ("binary_connect", "binary_connect", "nnabla: binary weights"),
    ("binary_weight", "binary_weight", "nnabla: BWN weights"),
    ("fixed_connect4", "fixed_connect4", "nnabla: 4-bit fixed-point weights"),
    ("pow2_connect4", "pow2_connect4", "nnabla: 4-bit power-of-two weights"),
    ("inq4", "inq4", "nnabla: INQ, 4-bit powers of two"),
    ("minmax4", "minmax4", "nnabla: 4-bit min-max weights"),
    ("fixed_net4", "fixed_net4", "nnabla: W4A4 fixed point (target W4A4)"),
    ("pow2_net4", "pow2_net4", "nnabla: pow2 weights and activations"),
    ("binary_net", "binary_net", "nnabla: BinaryNet W1A1 (target W1A1)"),
    ("qnn_w1a2", "qnn_w1a2", "QNN W1A2"),
    ("W4A4 pact", Scheme(weights="fixed4", activations="pact4"), "4-bit weights, PACT 4-bit"),
    ("W2A2", Scheme(weights="ternary", activations="pact2"), "ternary weights, PACT 2-bit (target W2A2)"),
    ("W1A1 bwn", Scheme(weights="bwn", activations="binary"), "BWN weights, binary {0, α}"),
]


def max_codes(flatbuffer, qat, x_test) -> int:
    x_q = tflq.io_quantization(flatbuffer)[0].quantize(x_test)
    seen = 0
    for a in low_bit_activations(qat, flatbuffer):
        values = tflm_host.predict(fb.cut_at(flatbuffer, a.tensor), x_q)
        seen = max(seen, len(np.unique(values)))
    return seen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--float_epochs", type=int, default=5)
    parser.add_argument("--qat_epochs", type=int, default=3)
    parser.add_argument("--rows", default="", help="comma-separated labels (default: all)")
    args = parser.parse_args()
    (x_train, y_train), (x_test, y_test) = datasets.load("fashion_mnist")
    keras.utils.set_random_seed(0)
    float_model = models.compile_for_classification(models.build("cnn", x_train.shape[1:]))
    float_model.fit(x_train, y_train, epochs=args.float_epochs, batch_size=128, verbose=0)
    float_acc = float(np.mean(float_model.predict(x_test, verbose=0).argmax(-1) == y_test))
    print(f"float {float_acc:.4f}", flush=True)
    wanted = set(args.rows.split(",")) if args.rows else None
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, scheme, what in ROWS:
            if wanted and label not in wanted:
                continue
            row = {"scheme": label, "what": what}
            try:
                resolved = schemes.resolve(scheme)
            except tflq.TflqError as e:
                row["refused"] = str(e)
                results.append(row)
                print(label, "refused", flush=True)
                continue
            keras.utils.set_random_seed(1)
            qat = tflq.quantize_model(float_model, scheme=resolved, calibration_data=x_train[:1000])
            models.compile_for_classification(qat, learning_rate=1e-4 if label == "int8" else 1e-3)
            epochs = max(args.qat_epochs, 4) if resolved.incremental else args.qat_epochs
            callbacks = [inq.INQ()] if resolved.incremental else []
            qat.fit(x_train, y_train, epochs=epochs, batch_size=128, verbose=0,
                    callbacks=callbacks)
            flatbuffer = tflq.convert(qat)
            lite = pipeline.tflite_predict(flatbuffer, x_test)
            row["accuracy"] = float(np.mean(lite.argmax(-1) == y_test))
            row["agreement"] = float(np.mean(lite.argmax(-1) == qat.predict(x_test, verbose=0).argmax(-1)))
            row["weight_bytes"] = sum(l.packed_bytes for l in report.layer_weights(qat))
            lows = low_bit_activations(qat, flatbuffer)
            row["activation_bits"] = min((int(np.ceil(np.log2(a.num_levels))) for a in lows), default=8)
            row["max_codes"] = max_codes(flatbuffer, qat, x_test) if lows else None
            x_q = tflq.io_quantization(flatbuffer)[0].quantize(x_test[:8])
            device = measure(label.replace(" ", "_"), flatbuffer, Path(tmp), inputs=x_q)
            for key in ("instructions", "arena_used", "ram_used", "flash", "weight_bytes",
                        "bit_exact"):
                row["device_" + key] = device[key]
            row["device_arena_int8_activations"] = device["arena_used"]
            if lows:  # the same firmware with every activation int8
                unpacked = measure(label.replace(" ", "_") + "_int8_activations", flatbuffer,
                                   Path(tmp), inputs=x_q, pack_activations=False)
                row["device_arena_int8_activations"] = unpacked["arena_used"]
                row["device_bit_exact"] &= unpacked["bit_exact"]
            if label == "int8":  # TFLM's layout: no pool fused
                unfused = measure("int8_unfused", flatbuffer, Path(tmp), inputs=x_q,
                                  fuse_pools=False)
                row["device_unfused"] = {k: unfused[k] for k in (
                    "instructions", "arena_used", "ram_used", "flash", "bit_exact")}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "what"}), flush=True)
    write(results, float_acc, args)


def write(results, float_acc, args):
    OUT.with_suffix(".json").write_text(json.dumps(
        {"float_accuracy": float_acc, "float_epochs": args.float_epochs,
         "qat_epochs": args.qat_epochs, "rows": results}, indent=1) + "\n")
    int8 = next((r for r in results if r["scheme"] == "int8" and "accuracy" in r), None)
    lines = [
        "# Low-bit activations: nnabla's families on Fashion-MNIST, on the FE310",
        "",
        f"`benchmarks/activations.py --float_epochs={args.float_epochs} "
        f"--qat_epochs={args.qat_epochs}`. Demo CNN; float accuracy {100 * float_acc:.2f}%. "
        "First conv and logits keep int8 weights, the logits int8 activations. TFLite "
        "accuracy on 10,000 test images; QAT-vs-TFLite top-1 agreement; codes: the most "
        "distinct values of any low-bit activation tensor over the test images (TFLM host "
        "reference). Device: QEMU `-icount shift=0`, packed weights, tflq kernels, "
        "bit-exact with the host reference (both firmwares of each row). Arena used: "
        "low-bit activations stored as k-bit codes and max-pools fused into the convs; "
        "beside it the same model's firmware with int8 activations "
        "(`pack_activations=False`), and the ratio to the int8 row's arena.",
        "",
        "| scheme | what | A bits | accuracy | vs float | agreement | codes | weight bytes "
        "| instructions / inference | arena used | arena, int8 activations | arena vs int8 "
        "| RAM used | bit-exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "refused" in r:
            lines.append(f"| {r['scheme']} | {r['what']} | | refused: {r['refused']} "
                         "| | | | | | | | | | |")
            continue
        ratio = f"{100 * r['device_arena_used'] / int8['device_arena_used']:.0f}%" if int8 else ""
        lines.append(
            f"| {r['scheme']} | {r['what']} | {r['activation_bits']} | {100 * r['accuracy']:.2f} "
            f"| {100 * (r['accuracy'] - float_acc):+.2f} | {100 * r['agreement']:.2f} "
            f"| {r['max_codes'] if r['max_codes'] is not None else '-'} | {r['weight_bytes']:,} "
            f"| {r['device_instructions']:,} | {r['device_arena_used']:,} "
            f"| {r['device_arena_int8_activations']:,} | {ratio} "
            f"| {r['device_ram_used']:,} | {'yes' if r['device_bit_exact'] else 'NO'} |")
    if int8:
        u = int8["device_unfused"]
        lines += ["", f"int8 firmware: {int8['device_instructions']:,} instructions, arena "
                      f"{int8['device_arena_used']:,} B, flash {int8['device_flash']:,} B. "
                      f"Without fused pools (`fuse_pools=False`, TFLM's layout: every "
                      f"conv output stored before its pool): {u['instructions']:,} "
                      f"instructions, arena {u['arena_used']:,} B, flash {u['flash']:,} B"
                      f"{'' if u['bit_exact'] else ' (NOT bit-exact)'}."]
        for r in results:
            if r.get("activation_bits", 8) < 8:
                lines.append(f"- {r['scheme']}: arena {r['device_arena_used']:,} B = "
                             f"{100 * r['device_arena_used'] / u['arena_used']:.0f}% of the "
                             f"unfused int8 firmware's, "
                             f"{100 * r['device_arena_used'] / int8['device_arena_used']:.0f}% "
                             "of the fused one's.")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
