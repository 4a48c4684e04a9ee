"""The accuracy firmware (``generate_project(eval_images=...)``) and the model in RAM.

Firmware (needs TFLM sources, riscv gcc, QEMU): a small log3 projection-profiles MLP
trained on Fashion-MNIST, its flatbuffer in RAM, computes the int8 features from raw
uint8 images on the device (micro/features/projection_profiles.c) and predicts them in
QEMU: image by image the same as the host reference on
converters.features.int8_profiles, and RAM within 16 KiB.

Host only: ``model_in_ram`` puts the model's bytes into the RAM budget, and a model too
big for RAM is refused with the numbers and nothing written.
"""
import re

import numpy as np
import pytest

import _models  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
from tflq.converters import features, firmware_run, micro_project
from tflq.errors import TflqError

NUM_IMAGES = 200
BINS = 16

needs_tflm = pytest.mark.usefixtures("firmware_tools")


def _int8(model, seed=0):
    import tensorflow as tf
    data = np.random.default_rng(seed).uniform(0, 1, (32, *model.input_shape[1:]))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None].astype(np.float32)] for x in data)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def _budget_line(project):
    return re.search(r"RAM budget: (.*)\. The arena", (project / "README.md").read_text()).group(1)


def test_model_in_ram_adds_the_model_to_the_budget(tmp_path):
    flatbuffer = _int8(_models.mlp(inputs=64, hidden=50))
    flash = micro_project.generate_project(flatbuffer, tmp_path / "flash", pack=False)
    ram = micro_project.generate_project(flatbuffer, tmp_path / "ram", pack=False,
                                         model_in_ram=True)
    in_ram = -(-len(flatbuffer) // 16) * 16
    flash_parts, flash_total = _budget_line(flash).split(" = ")
    assert "model in RAM" not in flash_parts
    # Same arena, stack and static; the model's bytes (rounded up to 16) on top.
    ram_parts, ram_total = _budget_line(ram).split(" = ")
    assert ram_parts == f"{flash_parts} + model in RAM {in_ram / 1024:.1f} KiB ({in_ram} B)"
    kib = lambda text: float(text.split(" KiB")[0])  # noqa: E731
    assert kib(ram_total) == pytest.approx(kib(flash_total) + in_ram / 1024, abs=0.11)
    # The default project is unchanged: the array is const, in .rodata (flash).
    assert "__attribute__" not in (flash / "model_data.cc").read_text()
    assert 'section(".data.tflq_model")' in (ram / "model_data.cc").read_text()
    assert "bytes in RAM" in (ram / "README.md").read_text()


def test_model_too_big_for_ram_is_refused_with_numbers(tmp_path):
    flatbuffer = _int8(_models.mlp(inputs=256, hidden=48))  # ~13 KB of weights
    out = tmp_path / "big"
    with pytest.raises(TflqError) as e:
        micro_project.generate_project(flatbuffer, out, pack=False, model_in_ram=True)
    message = str(e.value)
    assert "model_in_ram=True" in message and f"{len(flatbuffer)} B" in message
    assert "16384 B" in message and "> 16 KiB" in message
    assert "model in RAM" in message
    assert not out.exists() and not list(tmp_path.iterdir())
    # In flash it fits.
    micro_project.generate_project(flatbuffer, out, pack=False)


def test_eval_inputs_are_checked(tmp_path):
    flatbuffer = _int8(_models.mlp(inputs=4 * BINS, hidden=8))
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(TflqError, match="one integer label per eval image"):
        micro_project.generate_project(flatbuffer, tmp_path / "a", eval_images=images,
                                       eval_labels=[1, 2], feature="projection_profiles")
    with pytest.raises(TflqError, match="raw uint8 images"):
        micro_project.generate_project(flatbuffer, tmp_path / "b",
                                       eval_images=images.astype(np.int8), eval_labels=[0, 1, 2],
                                       feature="projection_profiles")
    with pytest.raises(TflqError, match="unknown feature"):
        micro_project.generate_project(flatbuffer, tmp_path / "c", eval_images=images,
                                       eval_labels=[0, 1, 2], feature="hog")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def log3_profiles_model():
    """A 64 -> 50 -> 10 log3 MLP (all layers log3) on Fashion-MNIST profiles (~30 s)."""
    import tf_keras as keras

    import tflq
    from tflq import datasets, models
    from tflq.layers import profile_matrix
    from tflq.schemes import Scheme

    try:
        (x_train, y_train), (x_test, y_test) = datasets.load("fashion_mnist")
    except TflqError as e:
        pytest.skip(str(e))
    matrix = profile_matrix(28, 28, BINS)
    f_train = x_train[:20000].reshape(-1, 784) @ matrix
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential([L.InputLayer((4 * BINS,)), L.Dense(50, activation="relu"),
                              L.Dense(10)])
    models.compile_for_classification(model)
    model.fit(f_train, y_train[:20000], epochs=3, batch_size=128, verbose=0)
    qat = tflq.quantize_model(model, scheme=Scheme(weights="log3", first_last_int8=False),
                              calibration_data=f_train[:1000])
    models.compile_for_classification(qat)
    qat.fit(f_train, y_train[:20000], epochs=1, batch_size=128, verbose=0)
    images = np.rint(x_test[:NUM_IMAGES, ..., 0] * 255).astype(np.uint8)
    return tflq.convert(qat), images, y_test[:NUM_IMAGES]


@pytest.mark.firmware
@pytest.mark.slow
@needs_tflm
def test_accuracy_firmware_matches_host_image_by_image(log3_profiles_model, tmp_path):
    import tflq
    from test_firmware_qemu import build_and_run

    flatbuffer, images, labels = log3_profiles_model
    project = micro_project.generate_project(
        flatbuffer, tmp_path / "eval", model_in_ram=True, eval_images=images,
        eval_labels=labels, feature="projection_profiles")
    run = build_and_run(project, timeout_s=600)
    assert run.exit_code == 0, run.tail()

    preds = run.preds
    assert preds is not None and preds.shape == (NUM_IMAGES, 3), run.uart_text[-2000:]
    np.testing.assert_array_equal(preds[:, 0], np.arange(NUM_IMAGES))
    np.testing.assert_array_equal(preds[:, 1], labels)

    in_q, _ = tflq.io_quantization(flatbuffer)
    inputs = features.int8_profiles(images, BINS, in_q.scale, in_q.zero_point)
    host_outputs, reference = firmware_run.host_reference(project, inputs)
    host = host_outputs.argmax(-1)
    np.testing.assert_array_equal(preds[:, 2], host, err_msg=reference)
    correct = int(np.sum(host == labels))
    assert re.search(rf"^ACCURACY {correct}/{NUM_IMAGES}$", run.uart_text, re.M)
    assert correct / NUM_IMAGES > 0.6

    # RAM: the stack the linker reserves + .data (the model included) + .bss.
    stats = run.stats
    static, arena = firmware_run.ram_sections(run.elf)
    budget_stack = int(re.search(r"^STACK_BYTES := (\d+)$", (project / "Makefile").read_text(),
                                 re.M).group(1))
    # The firmware's model (packed: smaller than the int8 one) is in .data.
    assert firmware_run.elf_sections(run.elf)[".data"] >= len(project.flatbuffer)
    assert int(stats["arena_bytes"]) <= arena
    assert int(stats["stack_bytes"]) <= budget_stack
    assert budget_stack + static <= micro_project.RAM_BYTES


@pytest.mark.firmware
@needs_tflm
def test_accuracy_firmware_on_int8_inputs_with_the_model_in_flash(tmp_path):
    """feature=None: the eval images are the model's int8 inputs (no feature code)."""
    from test_firmware_qemu import build_and_run

    flatbuffer = _int8(_models.mlp(inputs=48, hidden=16))
    inputs = np.random.default_rng(2).integers(-128, 128, (24, 48), dtype=np.int8)
    labels = np.arange(24) % 10
    project = micro_project.generate_project(flatbuffer, tmp_path / "int8_eval",
                                             eval_images=inputs, eval_labels=labels)
    assert not (project / "tflq_kernels/projection_profiles.c").exists()
    assert "__attribute__" not in (project / "model_data.cc").read_text()
    run = build_and_run(project)
    assert run.exit_code == 0, run.tail()
    host = firmware_run.host_reference(project, inputs)[0].argmax(-1)
    np.testing.assert_array_equal(run.preds[:, 2], host)
    assert re.search(rf"^ACCURACY {int(np.sum(host == labels))}/24$", run.uart_text, re.M)
    assert "FEATURES" not in run.uart_text
