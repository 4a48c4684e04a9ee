"""Packed low-bit firmware (TFLQ_PACKED ops) is bit-exact with the int8 model.

For each model and codebook, the FC / CONV_2D / DEPTHWISE_CONV_2D weights are drawn
from the codebook; the packed firmware's OUTPUT lines must equal the host reference
on the packed model with tflq's kernels (the same sources and kernels built for the
host), TFLM's reference kernels on the unpacked int8 model, and, for one codebook,
the unpacked int8 firmware on TFLM's reference kernels. Corrupt packed tensors are
refused at Prepare. Needs TFLM sources, riscv64-unknown-elf-gcc and QEMU.
"""
import re

import numpy as np
import pytest

import _models
import tf_keras as keras
from tflq import models
from tflq.converters import firmware_run, micro_project, packing, project_files, tflm_host
from test_firmware_qemu import build_and_run

pytestmark = [pytest.mark.firmware, pytest.mark.usefixtures("firmware_tools")]

NUM_INPUTS = 32
CODEBOOKS = {  # int8 levels -> the encoding the packer must choose
    "binary": ([-90, 90], "1-bit bit-planes"),
    "ternary": ([-60, 0, 60], "2-bit bit-planes"),
    "log3": ([-64, -32, -16, 0, 16, 32, 64], "3-bit codebook"),
    "fixed4": (list(range(-105, 106, 15)), "4-bit bit-planes"),
    "random16": ([-127, -99, -80, -61, -40, -33, -20, -7, 3, 11, 29, 47, 70, 88, 101, 127],
                 "4-bit codebook"),
}


def device_outputs(project, count):
    run = build_and_run(project)
    assert run.exit_code == 0, run.tail()
    assert run.outputs.shape[0] == count, run.tail()
    return run


@pytest.mark.parametrize("codebook", list(CODEBOOKS))
@pytest.mark.parametrize("name", ["mlp", "small_cnn", "dw_large"])
def test_packed_firmware_is_bit_exact(name, codebook, tmp_path):
    levels, encoding = CODEBOOKS[codebook]
    flatbuffer = _models.with_codebook(_models.build(name), levels)
    inputs = _models.random_inputs(flatbuffer, NUM_INPUTS)
    # Every layer on its low-bit kernel (not int8 rows where they are faster: below).
    project = micro_project.generate_project(flatbuffer, tmp_path / "packed", test_inputs=inputs,
                                             choose="smallest")
    packed = [p for p in project.packing if p.encoding and not p.encoding.startswith("int8")]
    assert packed and {p.encoding for p in packed} == {encoding}, project.packing_lines
    # Layers whose blob would outgrow their int8 bytes (tiny layers) keep int8 weights:
    # builtin, or int8 rows where a max-pool is fused into them, or (FCs) in channel
    # groups read in sequence.
    kept = [p for p in project.packing if not p.encoding]
    assert all("would not be smaller" in p.reason for p in kept), project.packing_lines
    rows = [p for p in project.packing if p.encoding and p.encoding.startswith("int8")]
    assert all(p.encoding == packing.INT8_ROWS_SEQUENTIAL if p.op == "FULLY_CONNECTED"
               else p.pool and p.encoding == "int8 rows (a max-pool is fused)"
               for p in rows), project.packing_lines
    if name == "dw_large":
        assert "DEPTHWISE_CONV_2D" in {p.op for p in packed}, project.packing_lines
    # The README says what the result says.
    readme = (project / "README.md").read_text()
    assert all(line in readme for line in project.packing_lines)

    run = device_outputs(project, NUM_INPUTS)
    firmware_run.check_bit_exact(run, inputs)  # packed model, tflq kernels, on the host
    int8_host = tflm_host.predict(flatbuffer, inputs, kernels="reference")
    differ = firmware_run.mismatches(run.outputs, int8_host)
    assert not differ, (f"{name}/{codebook}: packed firmware differs from TFLM's reference "
                        f"kernels on the int8 model for inputs {differ}")

    if codebook == "ternary":  # and equal to the unpacked int8 firmware (reference kernels)
        plain = micro_project.generate_project(flatbuffer, tmp_path / "int8", test_inputs=inputs,
                                               pack=False, kernels="reference")
        np.testing.assert_array_equal(run.outputs, device_outputs(plain, NUM_INPUTS).outputs)


def _corrupt_model_data(project, flatbuffer, corrupt):
    """Rewrites the project's model array with the packed model corrupted by ``corrupt``."""
    packed, _ = packing.pack_model(flatbuffer)
    start = packed.index(b"TQP2")
    bad = corrupt(bytearray(packed), start)
    cc = (project / "model_data.cc").read_text()
    body = project_files._c_bytes(bytes(bad))
    cc = re.sub(r"(g_model_data\[\] = \{\n).*?(\n\};)", lambda m: m.group(1) + body + m.group(2),
                cc, flags=re.S)
    (project / "model_data.cc").write_text(cc)


@pytest.mark.parametrize("what, corrupt, message", [
    ("bit width", lambda b, s: b.__setitem__(s + 6, 7) or b, "bits"),
    ("length", lambda b, s: b.__setitem__(s + 52, b[s + 52] ^ 4) or b, "header says"),
    ("codebook flag", lambda b, s: b.__setitem__(s + 7, 1) or b, "codebook need"),
])
def test_corrupt_packed_tensor_is_refused_at_prepare(what, corrupt, message, tmp_path):
    flatbuffer = _models.with_codebook(_models.build("mlp"), CODEBOOKS["ternary"][0])
    project = micro_project.generate_project(flatbuffer, tmp_path / "bad")
    _corrupt_model_data(project, flatbuffer, corrupt)
    run = build_and_run(project)
    assert run.exit_code != 0, f"{what}: firmware ran a corrupt packed tensor"
    assert run.outputs is None
    assert "TFLQ_PACKED:" in run.uart_text and message in run.uart_text, run.uart_text[-1000:]
    assert "OUTPUT" not in run.uart_text


def _flash_runs(projects, inputs):
    """Each project's firmware run with the flash-read plugin, each bit-exact with the
    host reference, all with the same outputs."""
    runs = []
    for project in projects:
        runs.append(firmware_run.run(project, flash=True))
        assert runs[-1].exit_code == 0, runs[-1].tail()
        firmware_run.check_bit_exact(runs[-1], inputs)
    for run in runs[1:]:
        np.testing.assert_array_equal(run.outputs, runs[0].outputs)
    return runs


def test_packed_weights_in_ram_leave_the_flash_alone(tmp_path):
    # The generator copies packed weights into the arena where the RAM left allows; the
    # QEMU flash-read plugin (converters/flash_reads.py) must then see an inference read
    # less from flash than the smallest blob, where the same firmware without the copies
    # reads every blob, CONV_2D rows once per output position. Same outputs either way.
    flatbuffer = _models.with_codebook(_models.build("small_cnn"), CODEBOOKS["ternary"][0])
    inputs = _models.random_inputs(flatbuffer, 4)
    # choose="smallest": the same (ternary) kernels in both, wherever the weights are.
    staged = micro_project.generate_project(flatbuffer, tmp_path / "ram", test_inputs=inputs,
                                            choose="smallest")
    flash = micro_project.generate_project(flatbuffer, tmp_path / "flash", test_inputs=inputs,
                                           weights_in_ram=False, choose="smallest")
    in_ram = [p for p in staged.packing if p.in_ram]
    assert in_ram and all(p.encoding for p in in_ram), staged.packing_lines
    assert not any(p.in_ram for p in flash.packing)
    readme = (staged / "README.md").read_text()
    assert all(f"weights in RAM ({p.packed_bytes} B copied" in readme for p in in_ram)
    assert staged.budget.arena >= flash.budget.arena + sum(
        packing.staged_bytes(p.packed_bytes) for p in in_ram)
    in_ram_run, flash_run = _flash_runs((staged, flash), inputs)
    assert in_ram_run.instructions == flash_run.instructions  # the same kernels
    # In flash, each blob is read flash_reads times (its rows are most of it); in RAM,
    # none of that is left (what remains: TFLM's own reads, builtin int8 layers).
    rows_read = sum(p.flash_reads * p.packed_bytes for p in in_ram)
    saved = flash_run.flash.bytes - in_ram_run.flash.bytes
    assert rows_read / 2 <= saved <= rows_read, (flash_run.flash, in_ram_run.flash, rows_read)


def test_int8_conv_rows_are_copied_into_ram(tmp_path):
    # An int8 CONV_2D reads its rows once per output position. By default the generator
    # makes it TFLQ_PACKED int8 rows copied into the arena (packing.INT8_ROWS_STAGED),
    # so the flash plugin must see an inference read less than the conv's weights once,
    # where the builtin kernel (pack=False) reads them at every position; same outputs.
    flatbuffer = _models.build("residual")
    inputs = _models.random_inputs(flatbuffer, 3)
    staged = micro_project.generate_project(flatbuffer, tmp_path / "ram", test_inputs=inputs)
    builtin = micro_project.generate_project(flatbuffer, tmp_path / "builtin",
                                             test_inputs=inputs, pack=False)
    [conv] = [p for p in staged.packing if p.op == "CONV_2D"]
    assert conv.encoding == packing.INT8_ROWS_STAGED and conv.in_ram, staged.packing_lines
    assert not builtin.packing
    runs = _flash_runs((staged, builtin), inputs)
    positions, weights = conv.flash_reads, conv.int8_bytes - 4 * 4  # 4 int32 biases
    assert positions == 8 * 8
    saved = runs[1].flash.bytes - runs[0].flash.bytes
    assert saved >= (positions - 1) * weights, (runs[0].flash, runs[1].flash)


@pytest.mark.parametrize("codebook", [None, "fixed4"])
def test_conv_rows_too_big_for_ram_are_staged_block_by_block(codebook, tmp_path):
    # A CONV_2D whose rows (int8, or 4-bit planes) do not fit the RAM left for a lasting
    # copy is staged at every Eval, a few output channels at a time, into scratch: the
    # flash plugin must see an inference read its blob about once, where the same
    # firmware without staging (weights_in_ram=False) reads it at every output
    # position; same outputs, both bit-exact with the host reference.
    flatbuffer = _models.build("wide_conv")
    if codebook:
        flatbuffer = _models.with_codebook(flatbuffer, CODEBOOKS[codebook][0])
    inputs = _models.random_inputs(flatbuffer, 2)
    # choose="smallest": fixed4 keeps its bit-plane kernel (by default, int8 rows)
    staged = micro_project.generate_project(flatbuffer, tmp_path / "staged", test_inputs=inputs,
                                            choose="smallest")
    flash = micro_project.generate_project(flatbuffer, tmp_path / "flash", test_inputs=inputs,
                                           weights_in_ram=False, choose="smallest")
    [conv] = [p for p in staged.packing if p.op == "CONV_2D"]
    assert conv.encoding and not conv.in_ram, staged.packing_lines
    assert 0 < conv.stage_channels < 32 and conv.stage_channels % packing.STAGE_UNIT == 0, staged.packing_lines
    assert conv.flash_reads == 12 * 12
    assert (f"{conv.stage_channels} channels at a time" in (staged / "README.md").read_text())
    assert staged.budget.total <= micro_project.RAM_BYTES
    runs = _flash_runs((staged, flash), inputs)
    # Per inference (the plugin's mean over windows): the blob once when staged, plus
    # TFLM's own reads, the same in both; 144 times in place.
    blob = conv.packed_bytes
    per_inference = [r.flash.bytes for r in runs]
    # (In place, a kernel may read a constant more than once per position.)
    saved = per_inference[1] - per_inference[0]
    assert saved >= 0.9 * (conv.flash_reads - 1) * blob, (runs[0].flash, runs[1].flash, blob)
    other = per_inference[0] - blob
    assert other < blob, (runs[0].flash, blob)


def test_generator_leaves_no_conv_reading_its_rows_from_flash_at_every_position(tmp_path):
    # DS-CNN with ternary weights: copying the first convs into RAM for good leaves no
    # room to stage the last ones, so the generator must try per-Eval staging first.
    # (Generation only: the RAM budget is measured with TFLM built for ILP32.)
    keras.utils.set_random_seed(0)
    flatbuffer = packing.with_weight_levels(
        _models.to_int8_tflite(models.build("ds_cnn", (49, 10, 1), 12)), [-60, 0, 60])
    project = micro_project.generate_project(flatbuffer, tmp_path / "p")
    convs = [p for p in project.packing if p.op == "CONV_2D"]
    assert len(convs) == 5 and all(p.encoding for p in convs), project.packing_lines
    assert packing.rereads_from_flash(project.flatbuffer) == [], project.packing_lines
    assert all(p.in_ram or p.stage_channels for p in convs)
    assert project.budget.total <= micro_project.RAM_BYTES


def test_layers_faster_as_int8_rows_run_on_them_and_stay_bit_exact(tmp_path):
    # The demo CNN's shape with 3-bit log weights: by default the generator runs its
    # layers on int8 rows, which take fewer instructions per MAC than the codebook kernel
    # and fit the RAM; the device's outputs equal TFLM's reference kernels on the int8
    # model, as the codebook kernel's do.
    flatbuffer = _models.with_codebook(_models.build("fashion_cnn"), CODEBOOKS["log3"][0])
    inputs = _models.random_inputs(flatbuffer, 8)
    project = micro_project.generate_project(flatbuffer, tmp_path / "fastest", test_inputs=inputs)
    rows = [p for p in project.packing if p.encoding and "faster than its 3-bit codebook" in
            p.encoding]
    assert rows and all(p.in_ram for p in rows), project.packing_lines
    run = device_outputs(project, len(inputs))
    firmware_run.check_bit_exact(run, inputs)
    differ = firmware_run.mismatches(run.outputs, tflm_host.predict(flatbuffer, inputs,
                                                                    kernels="reference"))
    assert not differ, f"int8 rows differ from TFLM's reference kernels for inputs {differ}"
