"""The seed project's experiment, on tflq: projection profiles + a 50-unit MLP with log weights.

Cai, Takemoto, Nakajo (GCCE / IAIT 2018) ran MNIST on a HiFive1: 4-direction
projection profiles (784 pixels -> 64 features), one hidden layer of 50 units,
log-quantized weights after training (no retraining), weights in the 16 KiB RAM.
This runs the same experiment on the datasets tflq ships (Fashion-MNIST, the 8x8
digits), with raw pixels and with profiles as input, weights float / int8 / log3 /
log4 / log7, each low-bit scheme post-training (``quantize_model`` with calibration
data, no fit: what the seed did) and with QAT, converts to int8 TFLite, checks TFLM's
host interpreter against tf.lite, builds each model as FE310 firmware (the model in
RAM when it fits) and measures RAM in QEMU, and runs an accuracy firmware that
computes the profiles on the device from raw uint8 images.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz \\
        .venv/bin/python benchmarks/projection_experiment.py
    .venv/bin/python benchmarks/projection_experiment.py --no_firmware   # host only

Writes docs/benchmarks/projection_experiment.{json,md}.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tflq  # noqa: E402  -- before TensorFlow
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from tflq.converters import features, micro_project, tflm, tflm_host, toolchain  # noqa: E402
from tflq import datasets, models, report  # noqa: E402
from tflq.errors import TflqError  # noqa: E402
from tflq.layers import profile_matrix  # noqa: E402
from tflq.schemes import Scheme  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "projection_experiment.md"
RESULTS = OUT.with_suffix(".json")
# 28x28: the seed's 16 bins per direction (64 features). 8x8: 8 bins, the most that
# leaves no bin empty (8 rows, 8 columns: one line per bin; 15 diagonals: two per bin,
# the last one), 32 features from 64 pixels.
BINS = {"fashion_mnist": 16, "digits": 8}
# The seed's MNIST accuracies (profiles, 50 hidden units, log weights, post-training).
SEED = {"log3": 0.921, "log4": 0.887, "log7": 0.929}
LOW_BIT = ("log3", "log4")
SELF_TEST_INPUTS = 8


def uint8_images(x: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 pixels of tflq's float images in [0, 1]."""
    return np.rint(x[..., 0] * 255).astype(np.uint8)


def build_mlp(input_shape) -> keras.Model:
    """The seed's network: (flatten) -> 50 ReLU -> 10."""
    L = keras.layers
    return keras.Sequential([L.InputLayer(input_shape, name="features"), L.Flatten(name="flatten"),
                             L.Dense(50, activation="relu", name="hidden"),
                             L.Dense(10, name="logits")], name="mlp")


def tflite_int8(flatbuffer: bytes, inputs: np.ndarray, batch: int = 1000) -> np.ndarray:
    """int8 outputs for int8 inputs, tf.lite reference kernels (as pipeline.tflite_predict)."""
    interpreter = tf.lite.Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        interpreter.resize_tensor_input(inp["index"], chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], chunk)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(outputs)


def device_inputs(flatbuffer: bytes, kind: str, images_u8: np.ndarray, bins: int) -> np.ndarray:
    """The int8 inputs the firmware feeds the model: profiles computed with integer
    arithmetic from the uint8 image (converters.features = micro/features), or pixels."""
    in_q, _ = tflq.io_quantization(flatbuffer)
    if kind == "profiles":
        return features.int8_profiles(images_u8, bins, in_q.scale, in_q.zero_point)
    return in_q.quantize(images_u8[..., None].astype(np.float32) / 255)


def size_sections(elf: Path) -> dict:
    tc = toolchain.find_toolchain()
    text = subprocess.run([tc.tool("size"), "-A", str(elf)], capture_output=True, text=True,
                          check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\.\w+)\s+(\d+)", text, re.M)}


def ram_of(project: Path, elf: Path) -> dict:
    """RAM the linker placed: the reserved stack + .data (+ .tdata) + .tbss + .bss."""
    sections = size_sections(elf)
    stack = int(re.search(r"^STACK_BYTES := (\d+)$", (project / "Makefile").read_text(),
                          re.M).group(1))
    static = sum(sections.get(s, 0) for s in (".data", ".tdata", ".tbss", ".bss"))
    return {"stack_reserved": stack, "data": sections.get(".data", 0),
            "bss": sections.get(".bss", 0), "ram_total": stack + static,
            "flash": sections.get(".init", 0) + sections.get(".text", 0)
            + sections.get(".data", 0) + sections.get(".tdata", 0)}


def firmware_bytes(project: Path) -> int:
    return int(re.search(r"\((\d+) bytes\)", (project / "model_data.cc").read_text()).group(1))


def measure_firmware(name: str, flatbuffer: bytes, inputs: np.ndarray, workdir: Path) -> dict:
    """Self-test firmware (model in RAM if it fits, else in flash) built and run in QEMU."""
    inputs = inputs[:SELF_TEST_INPUTS]
    try:
        project = micro_project.generate_project(flatbuffer, workdir / name, test_inputs=inputs,
                                                 model_in_ram=True)
        placement, refusal = "RAM", None
    except TflqError as e:
        refusal = str(e)
        project = micro_project.generate_project(flatbuffer, workdir / name, test_inputs=inputs)
        placement = "flash"
    tflm.make(project, "qemu-elf")
    elf = project / "build/hifive1-reva-qemu/firmware.elf"
    run = toolchain.run_qemu(elf, timeout_s=600)
    if run.exit_code != 0:
        raise RuntimeError(f"{name}: firmware exited {run.exit_code}:\n{run.uart_text[-1500:]}")
    got = np.array([list(map(int, m.group(1).split()))
                    for m in re.finditer(r"^OUTPUT \d+ (.*)$", run.uart_text, re.M)])
    host = tflm_host.predict(flatbuffer, inputs).reshape(len(inputs), -1)
    stats = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^STATS .*$", run.uart_text,
                                                      re.M).group(0)))
    layers = re.findall(r"^- ((?:FULLY_CONNECTED|CONV_2D|DEPTHWISE_CONV_2D) .*)$",
                        (project / "README.md").read_text(), re.M)
    return {"placement": placement, "ram_refusal": refusal, "bit_exact": bool(
                np.array_equal(got, host)),
            "firmware_model_bytes": firmware_bytes(project), "layers": layers,
            "arena_used": int(stats["arena_bytes"]), "stack_used": int(stats["stack_bytes"]),
            "instructions": int(stats["instructions_per_inference"]), **ram_of(project, elf)}


def eval_firmware(name, flatbuffer, images_u8, labels, bins, workdir: Path) -> dict:
    """The accuracy firmware: raw uint8 images in flash, profiles on the device, model in RAM."""
    project = micro_project.generate_project(
        flatbuffer, workdir / f"eval_{name}", model_in_ram=True, eval_images=images_u8,
        eval_labels=labels, feature="projection_profiles")
    start = time.time()
    tflm.make(project, "qemu-elf")
    build_s = time.time() - start
    elf = project / "build/hifive1-reva-qemu/firmware.elf"
    run = toolchain.run_qemu(elf, timeout_s=900)
    if run.exit_code != 0:
        raise RuntimeError(f"eval firmware exited {run.exit_code}:\n{run.uart_text[-1500:]}")
    preds = np.array([[int(v) for v in m.groups()] for m in
                      re.finditer(r"^PRED (\d+) (\d+) (\d+)$", run.uart_text, re.M)])
    correct, total = map(int, re.search(r"^ACCURACY (\d+)/(\d+)$", run.uart_text,
                                        re.M).groups())
    stats = dict(re.findall(r"(\w+)=(\d+)", re.search(r"^STATS .*$", run.uart_text,
                                                      re.M).group(0)))
    feature_instr = int(re.search(r"^FEATURES instructions_per_image=(\d+)$", run.uart_text,
                                  re.M).group(1))
    inputs = device_inputs(flatbuffer, "profiles", images_u8, bins)
    host = tflm_host.predict(flatbuffer, inputs).argmax(-1)
    lite = tflite_int8(flatbuffer, inputs).argmax(-1)
    return {"images": total, "device_correct": correct, "device_accuracy": correct / total,
            "host_accuracy": float(np.mean(host == labels)),
            "tflite_accuracy": float(np.mean(lite == labels)),
            "device_equals_host_per_image": bool(len(preds) == total
                                                 and np.array_equal(preds[:, 2], host)),
            "labels_echoed": bool(np.array_equal(preds[:, 1], labels)),
            "instructions_per_inference": int(stats["instructions_per_inference"]),
            "feature_instructions_per_image": feature_instr,
            "arena_used": int(stats["arena_bytes"]), "stack_used": int(stats["stack_bytes"]),
            "build_seconds": round(build_s, 1), **ram_of(project, elf)}


def evaluate(flatbuffer, inputs, labels) -> dict:
    lite = tflite_int8(flatbuffer, inputs)
    host = tflm_host.predict(flatbuffer, inputs).reshape(lite.shape)
    return {"tflite_accuracy": float(np.mean(lite.argmax(-1) == labels)),
            "host_accuracy": float(np.mean(host.argmax(-1) == labels)),
            "host_argmax_agreement": float(np.mean(host.argmax(-1) == lite.argmax(-1))),
            "host_outputs_identical": float(np.mean(np.all(host == lite, axis=-1))),
            "host_max_abs_diff": int(np.abs(host.astype(int) - lite.astype(int)).max()),
            "flatbuffer_bytes": len(flatbuffer)}


def run_input(dataset, kind, data, args, workdir) -> list:
    (x_train, y_train, u_train), (x_test, y_test, u_test) = data
    bins = BINS[dataset]
    if kind == "profiles":
        matrix = profile_matrix(*u_train.shape[1:], bins)
        f_train = (u_train.reshape(len(u_train), -1) / np.float32(255)) @ matrix
        f_test = (u_test.reshape(len(u_test), -1) / np.float32(255)) @ matrix
    else:
        f_train, f_test = x_train, x_test
    epochs, qat_epochs, batch = ((args.epochs, args.qat_epochs, 128) if dataset == "fashion_mnist"
                                 else (args.digits_epochs, args.digits_qat_epochs, 32))
    keras.utils.set_random_seed(0)
    float_model = models.compile_for_classification(build_mlp(f_train.shape[1:]))
    float_model.fit(f_train, y_train, epochs=epochs, batch_size=batch, verbose=0)
    n_weights = sum(int(np.prod(l.kernel.shape)) for l in float_model.layers if hasattr(l, "kernel"))
    base = {"dataset": dataset, "input": kind, "features": int(np.prod(f_train.shape[1:])),
            "epochs": epochs, "qat_epochs": qat_epochs}
    rows = [{**base, "weights": "float", "training": f"{epochs} epochs",
             "keras_accuracy": float(np.mean(
                 float_model.predict(f_test, verbose=0).argmax(-1) == y_test)),
             "weight_bytes": 4 * n_weights}]
    print(rows[-1], flush=True)
    calibration = f_train[:1000]
    variants = [("int8", "post-training")] + [(s, t) for s in LOW_BIT
                                              for t in ("post-training", "QAT")]
    for scheme_name, training in variants + [("log7", "post-training")]:
        row = {**base, "weights": scheme_name, "training": training}
        scheme = (scheme_name if scheme_name == "int8"
                  else Scheme(weights=scheme_name, first_last_int8=False))
        keras.utils.set_random_seed(1)
        try:
            qat = tflq.quantize_model(float_model, scheme=scheme, calibration_data=calibration)
        except TflqError as e:
            rows.append({**row, "refused": str(e)})
            print(rows[-1], flush=True)
            continue
        if training == "QAT":
            models.compile_for_classification(qat, learning_rate=1e-3)
            qat.fit(f_train, y_train, epochs=qat_epochs, batch_size=batch, verbose=0)
            row["training"] = f"QAT {qat_epochs} epochs"
        flatbuffer = tflq.convert(qat)
        inputs = device_inputs(flatbuffer, kind, u_test, bins)
        row.update(evaluate(flatbuffer, inputs, y_test))
        row["weight_bytes"] = sum(l.packed_bytes for l in report.layer_weights(qat))
        if not args.no_firmware:
            row["firmware"] = measure_firmware(f"{dataset}_{kind}_{scheme_name}_{training[:3]}",
                                               flatbuffer, inputs, workdir)
        row["_flatbuffer"] = flatbuffer
        rows.append(row)
        print({k: v for k, v in row.items() if k != "_flatbuffer"}, flush=True)
    if kind == "profiles" and not args.no_firmware and args.eval_images:
        best = max((r for r in rows if r["weights"] == "log3" and "_flatbuffer" in r),
                   key=lambda r: r["tflite_accuracy"])
        n = min(args.eval_images, len(u_test))
        result = eval_firmware(dataset, best["_flatbuffer"], u_test[:n], y_test[:n], bins, workdir)
        best["eval_firmware"] = result
        print("eval firmware", dataset, best["training"], result, flush=True)
    for row in rows:
        row.pop("_flatbuffer", None)
    return rows


def load(dataset: str):
    (x_train, y_train), (x_test, y_test) = datasets.load(dataset)
    u_train, u_test = uint8_images(x_train), uint8_images(x_test)
    # Every model sees the pixels the device stores: uint8 / 255 (the digits' 0..16
    # become 0..255 in steps of ~16; Fashion-MNIST is unchanged).
    x_train = (u_train / np.float32(255))[..., None]
    x_test = (u_test / np.float32(255))[..., None]
    return (x_train, y_train, u_train), (x_test, y_test, u_test)


def pct(v) -> str:
    return f"{100 * v:.2f}"


def render(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "# The seed's experiment: projection profiles + 50-unit MLP with log weights",
        "",
        f"Written by `{meta['command']}` ({meta['seconds']:.0f} s on this machine, 2 cores; "
        f"TFLM {meta['tflm_commit']}). Raw results: `projection_experiment.json`.",
        "",
        "The seed project (Cai, Takemoto, Nakajo, GCCE / IAIT 2018) ran **MNIST** on a HiFive1:",
        "4-direction projection profiles (784 pixels -> 64 features), one hidden layer of 50",
        "ReLU units, log-quantized weights after training (no retraining), weights in the",
        "16 KiB RAM; it reports 3-bit 0.921, 4-bit 0.887, 7-bit 0.929 (no float baseline).",
        "tflq has no MNIST: the rows below are **Fashion-MNIST** (clothing, generally a",
        "harder task than MNIST's digits) and scikit-learn's **8x8 digits** (1,797 images),",
        "so the seed's numbers sit beside the post-training profiles rows for orientation",
        "only: **the datasets differ**, and no row here is a reproduction of the seed's.",
        "",
        "Setup. Network: input -> Dense 50 ReLU -> Dense 10, as the seed. Inputs: raw pixels",
        "(uint8 / 255) or projection profiles (`tflq.layers.ProjectionProfiles`: mean pixel",
        "per bin, rows / columns / diagonals / anti-diagonals). Fashion-MNIST 28x28 uses the",
        "seed's 16 bins (64 features). The 8x8 digits use **8 bins** (32 features): the most",
        "that leaves no bin empty (8 rows and 8 columns give one line per bin, 15 diagonals",
        "two lines per bin but the last), i.e. the finest profile an 8x8 image has; 16 bins",
        "would leave empty bins. The MLP is trained on the float features; the converted",
        "model's input is the int8 feature vector, which the firmware computes from the raw",
        "uint8 image with integer arithmetic (`micro/features/projection_profiles.c`, =",
        "`converters.features.int8_profiles`). All accuracies of converted models are on",
        "those device int8 inputs, on the full test set (Fashion-MNIST 10,000; digits 360).",
        "",
        "Weights. *float*: the Keras float32 model. *int8*: tflq's int8 scheme, post-training.",
        "*log3 / log4* (`Scheme(weights=..., first_last_int8=False)`): **every** layer low-bit,",
        "as the seed quantized all weights; the activations are int8 (TFLite). *post-training*:",
        "`quantize_model(float_model, scheme, calibration_data=1,000 training samples)` and",
        "convert, no fit (what the seed did). *QAT*: the same, then a few epochs of",
        "quantization-aware training. *log7* is refused by tflq (message in the table): a",
        "b-bit log code has 2^(b-1) - 1 exponents, the levels are Δ·{0, ±1, ±2, …, ±2^(n-1)},",
        "and an int8 weight holds at most 7 exponents exactly (2^6 = 64 <= 127 < 2^7). log4 has",
        "exactly those 7 (±1 … ±64 Δ, 15 levels): it already holds every power of two an int8",
        "weight can represent, so in an int8 flatbuffer a \"log7\" could be no better than log4.",
        "(The seed's 7-bit code keeps 63 exponents, i.e. weights down to 2^-62 of the largest",
        "instead of log4's 2^-6 -> zero; the gain is in the tiny weights int8 cannot hold.)",
        "",
        "Columns. *TFLite int8*: accuracy of the int8 flatbuffer with tf.lite's reference",
        "kernels. *TFLM host*: `converters.tflm_host` (TFLM's kernels on the host, the",
        "firmware's bit-exact reference): share of test images whose prediction equals",
        "tf.lite's, share whose int8 outputs are identical, and the largest output difference",
        "in int8 steps (TFLM's and tf.lite's reference kernels round some fully-connected",
        "outputs differently by one step; the device matches TFLM). *weight bytes*: each layer's",
        "weights at its bits (float32 for float). *RAM*: the self-test firmware for that",
        "model (8 test inputs), built for rv32imac and run in `qemu-system-riscv32 -M",
        "sifive_e`: the stack the linker reserves + `.data` + `.bss` of the ELF (arena,",
        "static data and, with the model in RAM, the flatbuffer in `.data`; the device",
        "outputs were bit-exact with the TFLM host interpreter: column *QEMU = host*). The",
        "model is in RAM (`generate_project(model_in_ram=True)`) where it fits, else in",
        "flash, and the row says why (the generator's refusal). *model B*: the flatbuffer",
        "as the firmware embeds it (low-bit layers packed by `converters.packing` where",
        "eligible).",
        "",
        "| dataset | input | weights | training | TFLite int8 acc | TFLM host vs tf.lite: same argmax / same int8 outputs "
        "| weight bytes | model B (firmware) | RAM on FE310 (QEMU) | QEMU = host | seed (MNIST) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in results["rows"]:
        seed = (f"{100 * SEED[row['weights']]:.1f}" if row["input"] == "profiles"
                and row["weights"] in SEED and row["training"] == "post-training" else "")
        head = f"| {row['dataset']} | {row['input']} ({row['features']}) | {row['weights']} | "
        if "refused" in row:
            lines.append(head + f"{row['training']} | refused by tflq (see below) | | | | | | "
                         f"{seed} |")
            notes.append(row["refused"])
            continue
        if row["weights"] == "float":
            lines.append(head + f"{row['training']} | {pct(row['keras_accuracy'])} (Keras float) "
                         f"| | {row['weight_bytes']:,} (fp32) | | | | |")
            continue
        fw = row.get("firmware")
        if fw:
            ram = f"{fw['ram_total']:,} B, model in {fw['placement']}"
            if fw["ram_refusal"]:
                ram += " (too big for RAM)"
            model_b = f"{fw['firmware_model_bytes']:,}"
            exact = "yes" if fw["bit_exact"] else "**NO**"
        else:
            ram = model_b = exact = "not built"
        lines.append(head + f"{row['training']} | {pct(row['tflite_accuracy'])} | "
                     f"{pct(row['host_argmax_agreement'])} / {pct(row['host_outputs_identical'])} "
                     f"(max diff {row['host_max_abs_diff']}) | "
                     f"{row['weight_bytes']:,} | {model_b} | {ram} | {exact} | {seed} |")
    lines += ["", "Accuracies in %. log7 refusal, verbatim:", ""]
    lines += [f"> {n}" for n in sorted(set(notes))]
    refusals = [(r, r["firmware"]["ram_refusal"]) for r in results["rows"]
                if r.get("firmware", {}).get("ram_refusal")]
    if refusals:
        row, text = refusals[0]
        lines += ["", f"Models kept in flash: {', '.join(sorted({r['dataset'] + ' ' + r['input'] for r, _ in refusals}))}. "
                  f"The generator's refusal with the model in RAM, e.g. for {row['dataset']} "
                  f"{row['input']} {row['weights']} {row['training']}:", "", f"> {text}"]
    evals = [(r, r["eval_firmware"]) for r in results["rows"] if "eval_firmware" in r]
    if evals:
        lines += [
            "", "## Accuracy firmware", "",
            "`generate_project(flatbuffer, dir, model_in_ram=True, eval_images=uint8 images,",
            "eval_labels=labels, feature=\"projection_profiles\")` (template",
            "`converters/templates/main_eval.cc`): the first N test images as raw uint8 in",
            "flash, the best log3 profiles model (by TFLite accuracy) in RAM; the device",
            "computes the int8 profiles with `micro/features/projection_profiles.c`, runs",
            "the model, prints `PRED k label argmax` per image and `ACCURACY correct/total`.",
            "Host columns use the same images with `converters.features.int8_profiles`.",
            "The device must equal the TFLM host interpreter image by image (it does: same",
            "kernels) and is expected within 0.2 pt of tf.lite (its reference kernels round",
            "some outputs one step differently, which can flip a near tie).",
            "",
            "| dataset | model | images | device (QEMU) | TFLM host | tf.lite | device = host per image "
            "| instructions: features / inference | RAM total | arena used | stack used / reserved |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row, e in evals:
            lines.append(
                f"| {row['dataset']} | log3 {row['training']} | {e['images']:,} | "
                f"{e['device_correct']}/{e['images']} = {pct(e['device_accuracy'])} | "
                f"{pct(e['host_accuracy'])} | {pct(e['tflite_accuracy'])} | "
                f"{'yes' if e['device_equals_host_per_image'] else '**NO**'} | "
                f"{e['feature_instructions_per_image']:,} / {e['instructions_per_inference']:,} | "
                f"{e['ram_total']:,} B of 16,384 | {e['arena_used']:,} B | "
                f"{e['stack_used']:,} / {e['stack_reserved']:,} B |")
        lines += ["", "RAM total = reserved stack + `.data` (the model included) + `.bss` (arena, "
                  "feature scratch, TFLM and picolibc globals) from `riscv64-unknown-elf-size -A`; "
                  "instructions are `minstret` deltas in QEMU with `-icount shift=0` (exact "
                  "instruction counts, not times)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="fashion_mnist,digits")
    parser.add_argument("--inputs", default="raw,profiles")
    parser.add_argument("--epochs", type=int, default=5, help="Fashion-MNIST float epochs")
    parser.add_argument("--qat_epochs", type=int, default=2, help="Fashion-MNIST QAT epochs")
    parser.add_argument("--digits_epochs", type=int, default=60)
    parser.add_argument("--digits_qat_epochs", type=int, default=10)
    parser.add_argument("--eval_images", type=int, default=1000,
                        help="images in the accuracy firmware (0: none)")
    parser.add_argument("--no_firmware", action="store_true",
                        help="skip firmware builds and QEMU (no TFLM sources needed)")
    parser.add_argument("--render_only", action="store_true",
                        help="rewrite the markdown from the json, run nothing")
    args = parser.parse_args()
    if args.render_only:
        OUT.write_text(render(json.loads(RESULTS.read_text())))
        print(OUT.read_text())
        return
    if not args.no_firmware:
        tflm.source_root()  # names the missing TFLM sources up front
    start = time.time()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tflq-projection-") as tmp:
        for dataset in args.datasets.split(","):
            data = load(dataset)
            for kind in args.inputs.split(","):
                rows += run_input(dataset, kind, data, args, Path(tmp))
    root = None if args.no_firmware else tflm.source_root()
    command = " ".join(["benchmarks/projection_experiment.py", *sys.argv[1:]])
    if not args.no_firmware:
        command = f"TFLQ_TFLM_ARCHIVE=... .venv/bin/python {command}"
    else:
        command = f".venv/bin/python {command}"
    results = {"meta": {"command": command,
                        "seconds": time.time() - start,
                        "tflm_commit": tflm.local_commit(root) if root else "not built",
                        "seed_mnist": SEED, "bins": BINS},
               "rows": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    OUT.write_text(render(results))
    print(OUT.read_text())


if __name__ == "__main__":
    main()
