"""generate_project: files, ops, embedded data, RAM budget, atomic writes. No TFLM needed."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import _models  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
import tensorflow as tf

from tflq.converters import flatbuffer as fb
from tflq.converters import firmware_kernels, layer_cost, micro_project, packing, project_files, tflm
from tflq.errors import TflqError

PROJECT_FILES = {
    "Makefile", "README.md", "main.cc", "model_data.cc", "model_data.h", "test_data.cc",
    "test_data.h", "fe310/fe310.c", "fe310/fe310.h", "fe310/uart.c", "fe310/uart.h",
    "fe310/perf.h", "fe310/tflm_port.cc", "fe310/fe310_sections.ld", "fe310/hifive1-reva.ld",
    "fe310/hifive1-revb.ld",
    # the project as a Bazel workspace (tests/test_firmware_bazel.py)
    "WORKSPACE", ".bazelrc", "BUILD", "fe310/BUILD", "bazel/BUILD", "bazel/tflm.bzl",
    "bazel/toolchain/BUILD", "bazel/toolchain/cc_toolchain_config.bzl",
    "bazel/rules_cc_shim/WORKSPACE", "bazel/rules_cc_shim/BUILD", "bazel/rules_cc_shim/cc/BUILD",
    "bazel/rules_cc_shim/cc/defs.bzl",
    # the firmware's own flatbuffer and the generator's decisions (converters.firmware_run)
    "model.tflite", "tflq_project.json", "test_inputs.npy"}
# tflq's kernels for a FULLY_CONNECTED-only int8 model (kernels="tflq", the default):
# its FCs become TFLQ_PACKED int8 rows (channel groups read from flash in sequence).
RV32_FC_FILES = {f"tflq_kernels/{n}" for n in (
    "tflq_kernels.h", "tflq_requantize.h", "layer_check.c", "layer_eval.c", "tflq_ops.h", "int8_common.cc",
    "tflq_packed_op.cc")}


@pytest.fixture(scope="module")
def models():
    return {name: _models.build(name) for name in ("mlp", "small_cnn", "wide_cnn")}


@pytest.fixture(autouse=True)
def no_tflm_sources(monkeypatch):
    """Generating must not need the TFLM sources."""
    monkeypatch.delenv(tflm.ROOT_ENV, raising=False)
    monkeypatch.delenv(tflm.ARCHIVE_ENV, raising=False)


def tflite_op_names(flatbuffer):
    """The model's ops as TensorFlow Lite's own interpreter lists them."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def resolver_calls(main_cc: str):
    return sorted(re.findall(r"op_resolver\.(Add\w+)\(\)", main_cc))


def files_in(folder):
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def parse_c_array(text: str, name: str) -> list[int]:
    body = re.search(rf"{name}\[[^\]]*\](?:\[[^\]]*\])? = \{{(.*?)\n\}};", text, re.S).group(1)
    return [int(v, 0) for v in re.findall(r"-?0x[0-9a-f]+|-?\d+", body)]


def test_project_holds_model_ops_and_data(models, tmp_path):
    flatbuffer = models["mlp"]
    inputs = _models.random_inputs(flatbuffer, 5)
    out = micro_project.generate_project(flatbuffer, tmp_path / "mlp", test_inputs=inputs)

    assert files_in(out) == PROJECT_FILES | RV32_FC_FILES
    reference = micro_project.generate_project(flatbuffer, tmp_path / "ref", kernels="reference")
    assert files_in(reference) == PROJECT_FILES
    assert not [p for p in out.rglob("*") if p.is_file() and "{{" in p.read_text(errors="replace")]
    model_cc = (out / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_model_data[]" in model_cc
    assert bytes(parse_c_array(model_cc, "g_model_data")) == out.flatbuffer
    assert [p.encoding for p in out.packing] == [packing.INT8_ROWS_SEQUENTIAL] * 2
    test_cc = (out / "test_data.cc").read_text()
    assert np.array_equal(parse_c_array(test_cc, "g_test_inputs"), inputs.reshape(-1))
    assert "kNumTestInputs = 5;" in (out / "test_data.h").read_text()
    assert (out / "model.tflite").read_bytes() == out.flatbuffer
    assert (reference / "model.tflite").read_bytes() == flatbuffer
    info = json.loads((out / "tflq_project.json").read_text())
    assert info["kernels"] == "tflq" and info["rv32_int8"] == []
    assert info["num_test_inputs"] == 5 and info["budget"]["arena"] > 0


@pytest.mark.parametrize("choice", ["reference", "tflq"])
@pytest.mark.parametrize("name, ops, fused", [
    # tflq's kernels: FCs become TFLQ_PACKED int8 rows, and so do the conv and its
    # max-pool, as one op.
    ("mlp", ["FULLY_CONNECTED"], ["FULLY_CONNECTED"]),
    ("small_cnn", ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "RESHAPE"],
     ["CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D"]),
])
def test_resolver_registers_exactly_the_model_ops(models, tmp_path, name, ops, fused, choice):
    flatbuffer = models[name]
    assert tflite_op_names(flatbuffer) == ops
    out = micro_project.generate_project(flatbuffer, tmp_path / name, kernels=choice)
    main_cc = (out / "main.cc").read_text()

    builtin = [op for op in ops if choice == "reference" or op not in fused]
    custom = choice == "tflq" and bool(fused)
    assert resolver_calls(main_cc) == sorted(tflm.OPS[op].resolver_call for op in builtin)
    assert ("AddCustom(tflq::kPackedOpName" in main_cc) == custom
    assert f"MicroMutableOpResolver<{len(builtin) + custom}>" in main_cc
    ops = builtin
    makefile = (out / "Makefile").read_text()
    listed = [k for k in re.search(r"TFLM_KERNEL_SRCS := \\\n(.*?)\n\n", makefile,
                                   re.S).group(1).split() if k != "\\"]
    replaced = {f"tensorflow/lite/micro/kernels/{n}.cc" for n in ("conv", "fully_connected")}
    want = [k for k in tflm.kernel_sources(ops) if choice == "reference" or k not in replaced]
    assert listed == want
    tflq_sources = re.search(r"TFLQ_KERNEL_SRCS := \\\n(.*?)\n\n", makefile, re.S).group(1)
    assert ("tflq_kernels/conv.cc" in tflq_sources) == ("CONV_2D" in ops and choice == "tflq")
    assert ("tflq_kernels/fully_connected.cc" in tflq_sources) == (
        "FULLY_CONNECTED" in ops and choice == "tflq")


def test_arena_in_firmware_is_the_budgeted_bound(models, tmp_path):
    flatbuffer = models["small_cnn"]
    budget = micro_project.memory_budget(flatbuffer, plan=firmware_kernels.plan(flatbuffer))
    assert budget.arena >= micro_project.memory_budget(flatbuffer).arena
    out = micro_project.generate_project(flatbuffer, tmp_path / "cnn", pack=False)
    main_cc = (out / "main.cc").read_text()
    assert f"kTensorArenaSize = {budget.arena};" in main_cc
    assert budget.arena % 16 == 0 and budget.total <= micro_project.RAM_BYTES
    # The int8 activations alone: the 10x10x4 conv output and the 5x5x4 pooled one.
    assert budget.arena >= 10 * 10 * 4 + 5 * 5 * 4
    assert f"STACK_BYTES := {budget.stack}" in (out / "Makefile").read_text()
    # By default the max-pool is fused into the conv (TFLQ_PACKED int8 rows): the 10x10x4
    # output is never stored, and the firmware's budget is that model's.
    fused = micro_project.generate_project(flatbuffer, tmp_path / "fused", weights_in_ram=False)
    assert [p.pool for p in fused.packing if p.op == "CONV_2D"] != [""]
    assert f"kTensorArenaSize = {fused.budget.arena};" in (fused / "main.cc").read_text()
    assert fused.budget.arena < budget.arena


def test_model_too_big_for_ram_is_refused_with_its_numbers(models, tmp_path):
    out = tmp_path / "wide"
    with pytest.raises(TflqError) as error:
        micro_project.generate_project(models["wide_cnn"], out)
    found = re.search(r"arena (\d+\.\d) KiB \+ stack (\d+\.\d) KiB \+ static (\d+\.\d) KiB = "
                      r"(\d+\.\d) KiB > 16 KiB RAM \(FE310\)", str(error.value))
    assert found, str(error.value)
    arena, stack, static, total = map(float, found.groups())
    # One 48x48x16 int8 activation is 36 KiB; the input (2.25 KiB) is live beside it.
    assert arena >= 36 + 2.25 and stack == 2.0
    assert abs(arena + stack + static - total) <= 0.15
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_folder_is_kept_unless_overwrite(models, tmp_path):
    out = tmp_path / "proj"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(TflqError, match="already exists"):
        micro_project.generate_project(models["mlp"], out)
    assert files_in(out) == {"mine.txt"}

    micro_project.generate_project(models["mlp"], out, overwrite=True, kernels="reference")
    assert files_in(out) == PROJECT_FILES
    assert [p.name for p in tmp_path.iterdir()] == ["proj"]  # no temporary folders left


def test_failure_midway_writes_nothing(models, tmp_path, monkeypatch):
    def broken(text, values, template):
        if template == "Makefile":
            raise TflqError("template broke")
        return text
    monkeypatch.setattr(project_files, "_fill", broken)
    with pytest.raises(TflqError, match="template broke"):
        micro_project.generate_project(models["mlp"], tmp_path / "proj")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_op_is_named(models, tmp_path):
    model = fb.load(models["mlp"])
    model.operatorCodes[0].builtinCode = fb.schema.BuiltinOperator.SVDF
    model.operatorCodes[0].deprecatedBuiltinCode = fb.schema.BuiltinOperator.SVDF
    with pytest.raises(TflqError, match=r"op\(s\) SVDF"):
        micro_project.generate_project(fb.dump(model), tmp_path / "svdf")
    assert not (tmp_path / "svdf").exists()


def test_float_model_is_refused(tmp_path):
    import tf_keras as keras
    model = keras.Sequential([keras.layers.InputLayer((4,)), keras.layers.Dense(2)])
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    with pytest.raises(TflqError, match="is FLOAT32, not INT8"):
        micro_project.generate_project(flatbuffer, tmp_path / "float")


def test_bad_test_inputs_are_refused(models, tmp_path):
    with pytest.raises(TflqError, match="pass int8"):
        micro_project.generate_project(models["mlp"], tmp_path / "a",
                                       test_inputs=np.zeros((2, 64), np.float32))
    with pytest.raises(TflqError, match=r"expected \(count, 64\)"):
        micro_project.generate_project(models["mlp"], tmp_path / "b",
                                       test_inputs=np.zeros((2, 63), np.int8))


def test_default_self_test_input_is_the_zero_point(models, tmp_path):
    out = micro_project.generate_project(models["mlp"], tmp_path / "mlp")
    model = fb.load(models["mlp"])
    zero_point = int(fb.tensor(model, model.subgraphs[0].inputs[0]).zero_point[0])
    assert parse_c_array((out / "test_data.cc").read_text(), "g_test_inputs") == [zero_point] * 64


def test_missing_tflm_sources_name_what_to_set(monkeypatch, tmp_path):
    from tflq.converters import tflm_sources
    monkeypatch.setenv(tflm_sources.CACHE_ENV, str(tmp_path / "cache"))
    offline = tuple(d.with_url(f"file://{tmp_path}/absent-{d.name}.tar.gz")
                    for d in tflm_sources.DOWNLOADS)
    monkeypatch.setattr(tflm_sources, "DOWNLOADS", offline)
    with pytest.raises(TflqError) as e:
        tflm.source_root()
    message = str(e.value)
    assert tflm.ROOT_ENV in message and tflm.ARCHIVE_ENV in message and "\n" not in message
    assert tflm.source_root(required=False) is None


def test_op_table_is_consistent():
    for op, kernel in tflm.OPS.items():
        assert kernel.resolver_call.startswith("Add"), op
        assert all(s.startswith("tensorflow/lite/micro/kernels/") for s in kernel.sources), op
    assert not set(tflm.HOST_PORT_SOURCES) & set(tflm.FRAMEWORK_SOURCES)
    with pytest.raises(TflqError, match="CUMSUM"):
        tflm.kernels_for(["CUMSUM", "CONV_2D"])


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_makefile_without_tflm_root_says_what_to_set(models, tmp_path):
    out = micro_project.generate_project(models["mlp"], tmp_path / "mlp")
    done = subprocess.run(["make", "-n", "-C", str(out)], capture_output=True, text=True)
    assert done.returncode != 0 and "TFLQ_TFLM_ROOT is not set" in done.stderr
    assert subprocess.run(["make", "-C", str(out), "clean"], capture_output=True).returncode == 0


def test_kernel_plan_keeps_reference_kernels_for_layers_tflq_kernels_refuse():
    """A 10x8 depthwise kernel (80 taps, as in TFLM's micro_speech) is beyond tflq's
    depthwise kernel: that op type keeps TFLM's, and the plan says which layer and why."""
    from tflq.converters import firmware_kernels
    L = _models.L
    model = _models.keras.Sequential([L.InputLayer((49, 40, 1)),
                                      L.DepthwiseConv2D((10, 8), strides=2, name="dw"),
                                      L.Flatten(), L.Dense(4, name="fc")])
    plan = firmware_kernels.plan(_models.to_int8_tflite(model))
    assert plan.rv32_int8 == ("FULLY_CONNECTED",)
    assert "depthwise_conv.cc" in " ".join(plan.tflm_sources)
    assert "DEPTHWISE_CONV_2D keeps TFLM's reference kernel" in plan.note
    assert "10x8 depthwise kernel (at most 64 taps)" in plan.note


def test_weights_go_to_ram_most_read_first_within_the_ram_left():
    flatbuffer = _models.with_codebook(_models.build("fashion_cnn"), [-60, 0, 60])
    packed, ops = packing.pack_model(flatbuffer)
    assert sum(1 for p in ops if p.encoding) >= 2, packing.packing_lines(ops)
    _, nothing = packing.stage_in_ram(packed, ops, 0)
    assert not any(p.in_ram for p in nothing)
    everything_fb, everything = packing.stage_in_ram(packed, ops, 1 << 20)
    blobs = [p for p in everything if p.encoding]
    assert all(p.in_ram for p in blobs)
    assert packing.model_staged_bytes(everything_fb) == sum(
        packing.staged_bytes(p.packed_bytes) for p in blobs)
    # A CONV_2D reads its rows once per output position, the others once.
    for p in blobs:
        layer, _ = packing.unpack(_blob(everything_fb, p.output))
        assert p.flash_reads == (layer.out_hw[0] * layer.out_hw[1] if p.op == "CONV_2D" else 1)
    # Room for the most-read blob only: it alone goes to RAM, and the flatbuffer says so.
    first = max(blobs, key=lambda p: (p.flash_reads, p.packed_bytes))
    one_fb, one = packing.stage_in_ram(packed, ops, packing.staged_bytes(first.packed_bytes))
    assert [p.output for p in one if p.in_ram] == [first.output]
    assert _blob(one_fb, first.output)[packing.FLAGS_OFFSET] & packing.FLAG_IN_RAM
    assert packing.model_staged_bytes(one_fb) == packing.staged_bytes(first.packed_bytes)


def _blob(flatbuffer, output):
    model = fb.load(flatbuffer)
    for t in model.subgraphs[0].tensors:
        if t.name.decode() == output + "/tflq_packed":
            return bytes(bytearray(model.buffers[t.buffer].data))
    raise AssertionError(f"no packed blob for {output}")


def test_per_eval_staging_is_an_option_of_the_op_and_lasting_copies_clear_it():
    flatbuffer = _models.with_codebook(_models.build("fashion_cnn"), [-60, 0, 60])
    packed, ops = packing.pack_model(flatbuffer, int8_convs=True)  # the small one: int8 rows
    convs = packing.per_eval_candidates(packed, ops)
    assert [ops[i].op for i in convs] == ["CONV_2D", "CONV_2D"], packing.packing_lines(ops)
    assert sorted(packing.rereads_from_flash(packed)) == sorted(ops[i].output for i in convs)
    staged_fb, staged = packing.stage_per_eval(packed, ops, {convs[0]: 8, convs[1]: 1000})
    channels = packing.unpack(_blob(packed, ops[convs[1]].output))[0].out_channels
    assert [staged[i].stage_channels for i in convs] == [8, channels]  # capped
    assert packing.rereads_from_flash(staged_fb) == []
    assert packing.model_scratch_bytes(staged_fb) > packing.model_scratch_bytes(packed)
    with pytest.raises(TflqError, match="cannot stage 6 channels at a time"):
        packing.stage_per_eval(packed, ops, {convs[0]: 6})
    # A blob copied into RAM for good is no longer staged at every Eval.
    both_fb, both = packing.stage_in_ram(staged_fb, staged, 1 << 20)
    assert all(both[i].in_ram and not both[i].stage_channels for i in convs)
    assert packing.model_scratch_bytes(both_fb) == packing.model_scratch_bytes(packed)



def test_generator_picks_int8_rows_per_layer_where_its_estimate_is_lower(tmp_path):
    # log3 weights: int8 rows take fewer instructions per MAC than the codebook kernel.
    # The demo CNN's second conv has room for them in RAM: it runs on them. Its FC's
    # 7.8 KB of int8 rows would stay in flash, read at 64 cycles a byte: it keeps the
    # codebook. The result and the README give each choice and the estimate behind it.
    flatbuffer = _models.with_codebook(_models.build("fashion_cnn"),
                                       [-64, -32, -16, 0, 16, 32, 64])
    smallest = micro_project.generate_project(flatbuffer, tmp_path / "smallest",
                                              choose="smallest")
    fastest = micro_project.generate_project(flatbuffer, tmp_path / "fastest")
    assert all(not p.encoding.startswith("int8 rows (faster") for p in smallest.packing
               if p.encoding)
    rows = [p for p in fastest.packing if p.encoding and p.encoding.startswith("int8 rows (faster")]
    assert [p.op for p in rows] == ["CONV_2D"] and rows[0].in_ram, fastest.packing_lines
    [fc] = [p for p in fastest.packing if p.op == "FULLY_CONNECTED"]
    assert fc.encoding == "3-bit codebook" and not fc.in_ram, fastest.packing_lines
    assert packing.kernel_summary(fastest.packing) == (
        "CONV int8 rows; CONV int8 rows, not 3-bit codebook; FC 3-bit codebook")
    assert all(f"~{p.per_mac:.2f} vs ~" in p.encoding for p in rows)
    assert (layer_cost.of_model(fastest.packing).cycles
            < layer_cost.of_model(smallest.packing).cycles)
    assert fastest.budget.total <= micro_project.RAM_BYTES
    readme = (fastest / "README.md").read_text()
    for p in rows:
        assert p.estimate.describe() in readme
        assert p.estimate.instructions == round(p.macs * layer_cost.per_mac(p))


def test_generator_keeps_the_low_bit_kernel_where_int8_rows_would_not_fit_the_ram(tmp_path):
    # A ternary 784 -> 50 layer (the Fashion-MNIST MLP's): its 2-bit planes fit the RAM
    # and int8 rows do not, and reading 39 KB from flash per inference would cost more
    # than the int8 kernel saves.
    _models.keras.utils.set_random_seed(0)
    flatbuffer = _models.with_codebook(_models.to_int8_tflite(_models.mlp(784, 50)),
                                       [-60, 0, 60])
    project = micro_project.generate_project(flatbuffer, tmp_path / "fw")
    hidden = max(project.packing, key=lambda p: p.macs)
    assert hidden.encoding == "2-bit bit-planes" and hidden.in_ram, project.packing_lines
    assert hidden.estimate.flash_bytes == 0


def test_choose_must_be_known(tmp_path):
    with pytest.raises(TflqError, match="unknown choose='quickest'"):
        micro_project.generate_project(_models.build("mlp"), tmp_path / "fw", choose="quickest")
    assert not (tmp_path / "fw").exists()
