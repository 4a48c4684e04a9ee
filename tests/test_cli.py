"""The `tflq` console script, run as a user runs it (a real subprocess)."""
import json
import os
import subprocess
import sys

import pytest

TFLQ = [sys.executable, "-m", "tflq.cli.main"]


def tflq(*args, cwd=None):
    return subprocess.run(TFLQ + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


def test_helpfull_lists_the_verbs_flags():
    result = tflq("--helpfull")  # absl prints the help and exits 1, by its convention
    for flag in ("--dataset", "--scheme", "--output_dir", "--[no]overwrite", "--keras_model", "--output:"):
        assert flag in result.stdout


def test_missing_verb_is_a_usage_error():
    result = tflq("--dataset=digits")
    assert result.returncode != 0 and "give a verb first" in result.stderr


def test_bad_flag_is_refused():
    result = tflq("train", "--epochs=lots")
    assert result.returncode != 0 and "--epochs" in result.stderr


def test_unknown_dataset_value_is_refused():
    result = tflq("train", "--dataset=cifar10", "--output_dir=x")
    assert result.returncode != 0 and "dataset" in result.stderr


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = tflq("train", "--dataset=digits", "--model=mlp", "--epochs=2", "--qat_epochs=0.5",
                  f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TFLite int8 accuracy" in result.stdout
    return out


def test_train_writes_models_and_metrics(trained_dir):
    assert sorted(os.listdir(trained_dir)) == ["float.h5", "metrics.json", "model.tflite", "qat.h5"]
    metrics = json.loads((trained_dir / "metrics.json").read_text())
    assert metrics["flatbuffer_bytes"] == os.path.getsize(trained_dir / "model.tflite")
    assert metrics["qat_tflite_agreement"] >= 0.95


def test_existing_output_dir_is_not_overwritten(trained_dir):
    before = {f: os.path.getmtime(trained_dir / f) for f in os.listdir(trained_dir)}
    result = tflq("train", "--dataset=digits", "--model=mlp", "--epochs=0", "--qat_epochs=0",
                  f"--output_dir={trained_dir}")
    assert result.returncode != 0 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert {f: os.path.getmtime(trained_dir / f) for f in os.listdir(trained_dir)} == before


def test_convert_float_and_qat_models(trained_dir, tmp_path):
    for name in ("float.h5", "qat.h5"):
        out = tmp_path / f"{name}.tflite"
        result = tflq("convert", f"--keras_model={trained_dir / name}", "--dataset=digits",
                      f"--output={out}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert out.read_bytes()[4:8] == b"TFL3"
    again = tflq("convert", f"--keras_model={trained_dir / 'qat.h5'}", f"--output={out}")
    assert again.returncode != 0 and "already exists" in again.stderr
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temp files left


def test_convert_data_free(trained_dir, tmp_path):
    out = tmp_path / "free.tflite"
    result = tflq("convert", f"--keras_model={trained_dir / 'float.h5'}", "--data_free",
                  "--input_range=0,1", f"--output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[4:8] == b"TFL3"
    bad = tflq("convert", f"--keras_model={trained_dir / 'float.h5'}", "--data_free",
               "--input_range=0,wide", f"--output={tmp_path / 'bad.tflite'}")
    assert bad.returncode != 0 and "--input_range must be two numbers" in bad.stderr
    assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "bad.tflite")


def test_convert_with_low_bit_activations(trained_dir, tmp_path):
    out = tmp_path / "w1a2.tflite"
    result = tflq("convert", f"--keras_model={trained_dir / 'float.h5'}", "--dataset=digits",
                  "--scheme=binary", "--activations=pact2", f"--output={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes()[4:8] == b"TFL3"
    # The hidden layer's 2-bit codes are stored packed, unless asked not to.
    for flag, packed in (([], True), (["--nopack_activations"], False)):
        fw = tflq("micro", f"--tflite={out}", "--test_inputs=0", *flag,
                  f"--output_dir={tmp_path / ('fw' + str(packed))}")
        assert fw.returncode == 0, fw.stderr[-2000:]
        assert ("writes 2-bit codes" in fw.stdout) == packed, fw.stdout
        assert ("reads 2-bit codes" in fw.stdout) == packed, fw.stdout
    for args, says in ((["--scheme=pow2_net4"], "power-of-two activations cannot be exact"),
                       (["--activations=pow2"], "power-of-two activations cannot be exact"),
                       (["--activations=pact9"], "1 to 7 bits")):
        bad = tflq("convert", f"--keras_model={trained_dir / 'float.h5'}", "--dataset=digits",
                   *args, f"--output={tmp_path / 'bad.tflite'}")
        assert bad.returncode != 0 and says in bad.stderr, bad.stderr[-2000:]
        assert "Traceback" not in bad.stderr and not os.path.exists(tmp_path / "bad.tflite")


def test_convert_names_a_missing_model_file(tmp_path):
    result = tflq("convert", f"--keras_model={tmp_path}/nope.h5", f"--output={tmp_path}/m.tflite")
    assert result.returncode != 0 and "nope.h5: no such file" in result.stderr
    assert not os.path.exists(tmp_path / "m.tflite")


def test_micro_generates_a_project_and_keeps_an_existing_one(trained_dir, tmp_path):
    out = tmp_path / "fw"
    result = tflq("micro", f"--tflite={trained_dir / 'model.tflite'}", "--dataset=digits",
                  "--test_inputs=4", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "KiB RAM (FE310)" in result.stdout
    assert {"main.cc", "Makefile", "model_data.cc", "test_data.cc"} <= set(os.listdir(out))
    again = tflq("micro", f"--tflite={trained_dir / 'model.tflite'}", f"--output_dir={out}")
    assert again.returncode != 0 and "already exists" in again.stderr


def test_report_on_the_qat_model(trained_dir, tmp_path):
    result = tflq("report", f"--keras_model={trained_dir / 'qat.h5'}", f"--output_dir={tmp_path / 'r'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| hidden | int8 | 8 |" in (tmp_path / "r" / "report.md").read_text()
    refused = tflq("report", f"--keras_model={trained_dir / 'float.h5'}", f"--output_dir={tmp_path / 'f'}")
    assert refused.returncode != 0 and "is a float model" in refused.stderr


def test_a_model_file_with_code_is_not_run(tmp_path):
    """An .h5 whose Lambda would create a marker file when loaded: refused, marker absent."""
    marker = tmp_path / "pwned"
    code = (
        "import tflq, tf_keras as keras\n"
        "m = keras.Sequential([keras.layers.InputLayer((4,)), keras.layers.Lambda(\n"
        f"    lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1],\n"
        "    name='evil'), keras.layers.Dense(2)])\n"
        f"m.save({str(tmp_path / 'evil.h5')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    marker.unlink()  # building the model ran the lambda once; loading must not
    for verb in ("report", "convert"):
        result = tflq(verb, f"--keras_model={tmp_path / 'evil.h5'}",
                      f"--output_dir={tmp_path / 'r'}", f"--output={tmp_path / 'm.tflite'}")
        assert result.returncode == 1, result.stderr[-2000:]
        assert not marker.exists(), f"tflq {verb} ran the file's code"
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and "'evil' (Lambda: it carries Python code)" in lines[0], lines
        assert "--allow_unsafe_deserialization" in lines[0]
    trusted = tflq("report", f"--keras_model={tmp_path / 'evil.h5'}",
                   f"--output_dir={tmp_path / 'r2'}", "--allow_unsafe_deserialization")
    assert marker.exists() and "is a float model" in trusted.stderr  # loaded, as asked


def test_missing_required_flags_and_bad_paths_are_one_line(tmp_path):
    for args, says in ((["micro"], "--tflite is required"),
                       (["convert", f"--keras_model={tmp_path}", f"--output={tmp_path}/m"],
                        "a directory"),
                       (["micro", f"--tflite={tmp_path}", f"--output_dir={tmp_path}/fw"],
                        "a directory, not a .tflite file")):
        result = tflq(*args)
        lines = [l for l in result.stderr.splitlines() if l.strip()]
        assert result.returncode == 1 and len(lines) == 1 and says in lines[0], result.stderr
