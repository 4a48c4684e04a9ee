"""Seeded fuzzing of the firmware stage's entrance with mutated flatbuffers.

Each mutant of a small real model (int8 MLP, CNN, depthwise + softmax, and a packed
log3 MLP) goes through what `tflq micro` does: ``converters.model.read`` (validity),
then ``generate_project`` (ops, types, the RAM budget, the packed-layer rewrite, the
files). An accepted mutant is also run on TFLM's host build of the firmware's sources
(when TFLM sources are available), as the device would run it. Every outcome is one of:

- refused: a TflqError, one line (by stage);
- accepted: a project was written (and the host build ran it);
- traceback: any other Python exception (a defect);
- crash: the process died (signal), e.g. TFLM reading bytes it should never have got.

Mutants run in a child process that reports one line per mutant; when it dies, the
mutant it was on counts as a crash and a new child goes on with the next. The mutant
for index i is a function of (seed, i) alone.

    TFLQ_TFLM_ARCHIVE=../shared/deps/tflm-deps-90b983c2.tar.gz \\
        .venv/bin/python benchmarks/fuzz_flatbuffers.py --mutants=3000 --seed=0
Writes docs/benchmarks/fuzz.{md,json} (unless --nowrite).
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUTCOMES = ("refused at read", "refused by generate_project", "accepted", "traceback", "crash")
_BOUNDARY = (0, 1, 2, 3, 4, 7, 8, 16, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000,
             0xFFFFFFFF, 0xFFFFFFFE)


def mutate(base: bytes, seed: int, index: int) -> bytes:
    """Mutant ``index`` of ``base``: bit flips, a boundary integer written over an aligned
    word, a zeroed span, a truncation or a duplicated span."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    data = bytearray(base)
    kind = int(rng.integers(5))
    if kind == 0:
        for _ in range(int(rng.integers(1, 9))):
            data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        at = int(rng.integers(len(data) // 4)) * 4
        data[at:at + 4] = int(_BOUNDARY[int(rng.integers(len(_BOUNDARY)))]).to_bytes(4, "little")
    elif kind == 2:
        at = int(rng.integers(len(data)))
        data[at:at + int(rng.integers(1, 64))] = bytes(min(64, len(data) - at))
    elif kind == 3:
        data = data[:int(rng.integers(len(data)))]
    else:
        at, size = int(rng.integers(len(data))), int(rng.integers(1, 128))
        data[at:at] = data[at:at + size]
    return bytes(data)


def base_models(folder: Path) -> list[Path]:
    """The models to mutate, written to ``folder`` (built with plain TF, random weights)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _models
    from tflq.converters import packing

    paths = []
    for name in ("mlp", "small_cnn", "dw_softmax"):
        paths.append(folder / f"{name}.tflite")
        paths[-1].write_bytes(_models.build(name))
    packed = packing.pack_model(_models.with_codebook(_models.build("mlp"), [-64, -32, -16, 0,
                                                                              16, 32, 64]))[0]
    paths.append(folder / "mlp_packed_log3.tflite")
    paths[-1].write_bytes(packed)
    return paths


def _worker(bases: list[Path], seed: int, start: int, stop: int, run_host: bool) -> None:
    """One line per mutant on stdout: ``<index> <outcome>|<detail>``."""
    from tflq import _env  # noqa: F401
    from tflq.converters import firmware_run, micro_project, model
    from tflq.errors import TflqError

    data = [p.read_bytes() for p in bases]
    with tempfile.TemporaryDirectory(prefix="tflq-fuzz-") as tmp:
        for i in range(start, stop):
            mutant = mutate(data[i % len(data)], seed, i)
            print(f"{i} start", flush=True)
            try:
                try:
                    checked = model.read(mutant, f"mutant {i}")
                except TflqError as e:
                    outcome = ("refused at read", str(e))
                else:
                    try:
                        project = micro_project.generate_project(
                            mutant, Path(tmp) / str(i), model_name=f"mutant{i}")
                    except TflqError as e:
                        outcome = ("refused by generate_project", str(e))
                    else:
                        if run_host:
                            firmware_run.host_reference(project)
                        outcome = ("accepted", ", ".join(checked.op_names))
                        shutil.rmtree(project)
                if "\n" in outcome[1]:
                    outcome = ("traceback", "a multi-line message: " + outcome[1][:200])
            except Exception as e:  # noqa: BLE001 -- what the fuzzer is for
                outcome = ("traceback", f"{type(e).__name__}: {e}"[:300])
            print(f"{i} {outcome[0]}|{outcome[1][:300]}", flush=True)


def run(mutants: int, seed: int = 0, run_host: bool | None = None) -> dict:
    """Fuzzes ``mutants`` mutants; returns counts by outcome and examples."""
    from tflq.converters import tflm

    if run_host is None:
        run_host = tflm.source_root(required=False) is not None
    counts = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory(prefix="tflq-fuzz-bases-") as tmp:
        bases = base_models(Path(tmp))
        next_index = 0
        while next_index < mutants:
            cmd = [sys.executable, __file__, "--worker", str(seed), str(next_index),
                   str(mutants), "1" if run_host else "0", *map(str, bases)]
            child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            current = None
            for line in child.stdout:
                index, rest = line.rstrip("\n").split(" ", 1)
                if rest == "start":
                    current = int(index)
                    continue
                outcome, detail = rest.split("|", 1)
                counts[outcome] += 1
                if len(examples[outcome]) < 5:
                    examples[outcome].append(f"{index}: {detail}")
                current, next_index = None, int(index) + 1
            code = child.wait()
            if current is not None:  # it died on this one
                counts["crash"] += 1
                examples["crash"].append(f"{current}: exit {code}")
                next_index = current + 1
            elif code != 0 and next_index < mutants:
                raise RuntimeError(f"fuzz worker failed (exit {code}) before mutant {next_index}")
    return {"seed": seed, "mutants": mutants, "host_build_run": run_host,
            "counts": {k: counts.get(k, 0) for k in OUTCOMES}, "examples": dict(examples)}


def table(result: dict) -> str:
    lines = [f"Seed {result['seed']}, {result['mutants']} mutants of 4 models "
             f"(host build run on accepted mutants: {result['host_build_run']}).", "",
             "| outcome | mutants |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in result["counts"].items()]
    for outcome, found in result["examples"].items():
        lines += ["", f"Examples, {outcome}:", *[f"- `{e}`" for e in found]]
    return "\n".join(lines)


def main(argv) -> None:
    if argv[1:2] == ["--worker"]:
        seed, start, stop, host = map(int, argv[2:6])
        _worker([Path(p) for p in argv[6:]], seed, start, stop, bool(host))
        return
    args = dict(a.lstrip("-").split("=", 1) for a in argv[1:] if "=" in a)
    result = run(int(args.get("mutants", 3000)), int(args.get("seed", 0)))
    text = table(result)
    print(text)
    if "--nowrite" not in argv:
        out = ROOT / "docs" / "benchmarks"
        command = (f"TFLQ_TFLM_ARCHIVE=... .venv/bin/python benchmarks/fuzz_flatbuffers.py "
                   f"--mutants={result['mutants']} --seed={result['seed']}")
        (out / "fuzz.md").write_text(f"# Mutated flatbuffers through `tflq micro`'s stage\n\n"
                                     f"`{command}`\n\n{text}\n")
        (out / "fuzz.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv)
