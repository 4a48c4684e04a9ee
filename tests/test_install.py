"""A non-editable install (`pip install .` into a fresh venv) claims only the name `tflq`
and generates every kind of firmware: tflq's int8 kernels, packed low-bit layers, TFLM's
reference kernels, the projection-profiles accuracy firmware and the Bazel workspace.
Each project is built from the installed package's own copy of micro/, run in QEMU and
checked against the host reference built from the same installed sources.

The venv has no packages of its own: a .pth line makes this interpreter's site-packages
(TensorFlow, tfmot, …) visible, and `pip install --no-deps --no-build-isolation` builds the
wheel from a copy of the checkout's files, so nothing is downloaded or written here."""
import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest
import tf_keras as keras

import _models

pytestmark = [pytest.mark.firmware, pytest.mark.usefixtures("firmware_tools")]

REPO = Path(__file__).resolve().parent.parent
SHIPPED = ("setup.cfg", "pyproject.toml", "README.md", "tflq", "converters", "micro")
BINS = 16

SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys
    from pathlib import Path
    import numpy as np
    import tflq
    from tflq.converters import features, firmware_run, micro_project

    work = Path(sys.argv[1])
    report = {"tflq": tflq.__file__, "micro_dir": str(tflq.converters.micro_dir.MICRO_DIR),
              "top_level_converters": importlib.util.find_spec("converters") is not None}
    for kind, kwargs in (("tflq_kernels", {}), ("packed", {}),
                         ("reference_kernels", {"kernels": "reference"})):
        flatbuffer = (work / f"{kind}.tflite").read_bytes()
        inputs = np.load(work / f"{kind}.npy")
        project = micro_project.generate_project(flatbuffer, work / kind, test_inputs=inputs,
                                                 **kwargs)
        run = firmware_run.run(project)
        reference = firmware_run.check_bit_exact(run) if run.exit_code == 0 else None
        report[kind] = {"exit": run.exit_code, "reference": reference,
                        "packed": [op.encoding for op in project.packing if op.encoding],
                        "kernels": project.plan.kernels, "rv32_int8": project.plan.rv32_int8}

    flatbuffer = (work / "profiles.tflite").read_bytes()
    images = np.load(work / "images.npy")
    labels = [int(v) for v in np.arange(len(images)) % 10]
    project = micro_project.generate_project(flatbuffer, work / "profiles", eval_images=images,
                                             eval_labels=labels, feature="projection_profiles")
    run = firmware_run.run(project)
    in_q, _ = tflq.io_quantization(flatbuffer)
    host, _ = firmware_run.host_reference(
        project, features.int8_profiles(images, int(sys.argv[2]), in_q.scale, in_q.zero_point))
    report["profiles"] = {"exit": run.exit_code,
                          "device": [int(p) for p in run.preds[:, 2]],
                          "host": [int(p) for p in host.argmax(-1)]}
    report["bazel"] = sorted(str(p.relative_to(project)) for p in (project / "bazel").rglob("*")
                             if p.is_file())
    print("REPORT " + json.dumps(report))
""")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in SHIPPED:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, source / name)
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_tflq_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--no-deps", "--no-build-isolation", "--no-index", str(source)],
                          capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return root, python, Path(purelib)


def test_the_wheel_claims_only_the_name_tflq(installed):
    _, _, purelib = installed
    top_level = sorted(p.read_text().split()
                       for p in purelib.glob("tflq-*.dist-info/top_level.txt"))
    assert top_level == [["tflq"]]
    assert not (purelib / "converters").exists() and not (purelib / "micro").exists()
    assert (purelib / "tflq/_micro/kernels/tflq_kernels.h").is_file()
    assert (purelib / "tflq/_micro/bazel/rules_cc_shim/cc/defs.bzl").is_file()


def test_an_installed_tflq_generates_every_kind_of_firmware(installed):
    root, python, purelib = installed
    work = root / "work"
    work.mkdir()
    mlp = _models.build("mlp")
    for kind, flatbuffer in (("tflq_kernels", _models.build("dw_softmax")),
                             ("packed", _models.with_codebook(mlp, [-1, 0, 1])),
                             ("reference_kernels", _models.build("small_cnn"))):
        (work / f"{kind}.tflite").write_bytes(flatbuffer)
        np.save(work / f"{kind}.npy", _models.random_inputs(flatbuffer, 4))
    keras.utils.set_random_seed(0)
    (work / "profiles.tflite").write_bytes(_models.to_int8_tflite(_models.mlp(inputs=4 * BINS)))
    images = np.zeros((10, 28, 28), np.uint8)  # stripes: profiles that differ
    for k in range(10):
        images[k, 2 * k:2 * k + 6, :] = 255
        images[k, :, 27 - 2 * k:] = 128
    np.save(work / "images.npy", images)
    (root / "run.py").write_text(SCRIPT)

    done = subprocess.run([python, root / "run.py", work, str(BINS)], capture_output=True, text=True,
                          cwd=root, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    line = next(l for l in done.stdout.splitlines() if l.startswith("REPORT "))
    report = json.loads(line[len("REPORT "):])

    assert report["tflq"] == str(purelib / "tflq" / "__init__.py")
    assert report["micro_dir"] == str(purelib / "tflq" / "_micro")
    assert not report["top_level_converters"]
    for kind in ("tflq_kernels", "packed", "reference_kernels"):
        assert report[kind]["exit"] == 0 and report[kind]["reference"], report[kind]
    assert report["packed"]["packed"], report["packed"]
    assert report["reference_kernels"]["rv32_int8"] == [], report["reference_kernels"]
    assert "DEPTHWISE_CONV_2D" in report["tflq_kernels"]["rv32_int8"], report["tflq_kernels"]
    assert report["profiles"]["exit"] == 0
    assert report["profiles"]["device"] == report["profiles"]["host"]
    assert len(set(report["profiles"]["host"])) > 1  # the check can tell images apart
    assert {"bazel/tflm.bzl", "bazel/rules_cc_shim/cc/defs.bzl",
            "bazel/toolchain/cc_toolchain_config.bzl"} <= set(report["bazel"])
