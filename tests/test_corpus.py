"""Models nobody here wrote (../shared/models: TFLM's examples, MLPerf Tiny): each becomes
firmware that runs in QEMU and equals the host reference on every input, or is refused by
the CLI in one line naming the file and what is wrong.

The device figures each run prints (instructions, RAM) are in the test's output
(`pytest -s tests/test_corpus.py`)."""
import subprocess
import sys

import numpy as np
import pytest

from tflq.converters import firmware_run, micro_project

pytestmark = [pytest.mark.firmware, pytest.mark.usefixtures("firmware_tools")]

RUNS = ["tflm_hello_world_int8.tflite", "tflm_micro_speech_quantized.tflite",
        "mlperf_tiny_ad01_int8.tflite"]
REFUSED = {  # file -> what the one line must say
    "tflm_audio_preprocessor_int8.tflite": "uses op(s) CAST, DIV, SignalEnergy",
    "tflm_trained_lstm_int8.tflite": "uses op(s) UNIDIRECTIONAL_SEQUENCE_LSTM",
    "tflm_keyword_scrambled.tflite": "uses op(s) SVDF",
    "tflm_person_detect.tflite": "does not fit the FE310 with any kernel choice: arena 9",
    "tflm_simple_add_model.tflite": "has 2 inputs and 1 outputs",
    "mlperf_tiny_model_ToyCar_quant_fullint_micro.tflite": "'input_1' is FLOAT32, not INT8",
    "mlperf_tiny_kws_ref_model.tflite": "does not fit the FE310 with any kernel choice: arena 24",
}
TFLQ = [sys.executable, "-m", "tflq.cli.main"]


def test_the_corpus_is_what_this_test_covers(shared_models):
    assert sorted(p.name for p in shared_models.glob("*.tflite")) == sorted([*RUNS, *REFUSED])


@pytest.mark.parametrize("name", RUNS)
def test_model_runs_on_the_device_as_the_host_reference_says(name, shared_models, tmp_path):
    flatbuffer = (shared_models / name).read_bytes()
    project = micro_project.generate_project(flatbuffer, tmp_path / "fw", model_name=name,
                                             test_inputs=_random_inputs(flatbuffer, 8))
    run = firmware_run.run(project)
    assert run.exit_code == 0, run.tail()
    reference = firmware_run.check_bit_exact(run)  # on the inputs the project embeds
    ram, arena_array = firmware_run.ram_sections(run.elf)
    used = run.arena_bytes + run.stack_bytes + ram - arena_array
    print(f"\n{name}: {run.instructions} instructions per inference, RAM used {used} B "
          f"(arena {run.arena_bytes}, stack {run.stack_bytes}), equals {reference}")
    assert used <= micro_project.RAM_BYTES


def _random_inputs(flatbuffer, count):
    from tflq.converters import model
    checked = model.read(flatbuffer)
    shape = checked.tensors[checked.inputs[0]].shape[1:]
    return np.random.default_rng(0).integers(-128, 128, (count, *shape), dtype=np.int8)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_model_is_refused_in_one_line(name, shared_models, tmp_path):
    done = subprocess.run([*TFLQ, "micro", f"--tflite={shared_models / name}",
                           f"--output_dir={tmp_path / 'fw'}"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("I1", "W1"))]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("tflq micro: ") and name in lines[0] and REFUSED[name] in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "fw").exists()
