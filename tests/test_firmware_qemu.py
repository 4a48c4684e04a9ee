"""Generated firmware, built with real TFLM and run in QEMU, matches TFLM's host interpreter.

Needs the TFLM sources ($TFLQ_TFLM_ROOT), riscv64-unknown-elf-gcc and qemu-system-riscv32.
The first run compiles TFLM (minutes); later runs reuse the object cache.
"""
import os
import re
import subprocess

import numpy as np
import pytest

import _models  # sets TF_USE_LEGACY_KERAS before TensorFlow loads
from converters import firmware_kernels, micro_project, tflm, tflm_host, toolchain

pytestmark = pytest.mark.skipif(
    not os.environ.get(tflm.ROOT_ENV),
    reason=f"{tflm.ROOT_ENV} is not set: no TFLM sources to build firmware from")

NUM_INPUTS = 40
STATS = re.compile(r"^STATS instructions_per_inference=(\d+) arena_bytes=(\d+) "
                   r"stack_bytes=(\d+)$", re.M)


def build_and_run(project, timeout_s=300):
    tflm.make(project, "qemu-elf")
    return toolchain.run_qemu(project / "build/hifive1-reva-qemu/firmware.elf", timeout_s)


def outputs(uart_text):
    return {int(m.group(1)): np.array(m.group(2).split(), np.int64)
            for m in re.finditer(r"^OUTPUT (\d+)((?: -?\d+)+)$", uart_text, re.M)}


def ram_sections(elf):
    """Bytes of .data/.tdata/.tbss/.bss and of the tensor arena array, from the ELF."""
    tc = toolchain.find_toolchain()
    sizes = subprocess.run([tc.tool("size"), "-A", str(elf)], capture_output=True,
                           text=True, check=True).stdout
    ram = sum(int(m.group(2)) for m in re.finditer(r"^(\.data|\.tdata|\.tbss|\.bss)\s+(\d+)",
                                                    sizes, re.M))
    symbols = subprocess.run([tc.tool("nm"), "-S", str(elf)], capture_output=True, text=True,
                             check=True).stdout
    arena = int(re.search(r"^\w+ (\w+) [bB] \S*tensor_arena", symbols, re.M).group(1), 16)
    return ram, arena


# kernels="tflq": tflq's rv32 int8 FC / CONV_2D / DEPTHWISE_CONV_2D (the default);
# "reference": TFLM's. Both must match the host interpreter (TFLM's reference kernels).
@pytest.mark.parametrize("kernels", ["tflq", "reference"])
@pytest.mark.parametrize("name", ["mlp", "small_cnn", "fashion_cnn", "dw_softmax", "residual"])
def test_firmware_matches_host_interpreter_bit_for_bit(name, kernels, tmp_path):
    flatbuffer = _models.build(name)
    inputs = _models.random_inputs(flatbuffer, NUM_INPUTS)
    project = micro_project.generate_project(flatbuffer, tmp_path / name, test_inputs=inputs,
                                             kernels=kernels)
    run = build_and_run(project)
    assert run.exit_code == 0, run.uart_text[-2000:]

    got = outputs(run.uart_text)
    expected = tflm_host.predict(flatbuffer, inputs).reshape(NUM_INPUTS, -1)
    assert sorted(got) == list(range(NUM_INPUTS)), run.uart_text[-2000:]
    differ = [k for k in range(NUM_INPUTS) if not np.array_equal(got[k], expected[k])]
    assert not differ, (
        f"{name}: firmware outputs differ from the host interpreter for inputs {differ} "
        f"(first: firmware {got[differ[0]].tolist()} vs host {expected[differ[0]].tolist()}); "
        + tflm.commits_note(tflm.source_root()))

    stats = STATS.search(run.uart_text)
    assert stats, run.uart_text[-500:]
    instructions, arena, stack = map(int, stats.groups())
    budget = micro_project.memory_budget(flatbuffer,
                                         plan=firmware_kernels.plan(flatbuffer, kernels))
    assert instructions > 1000
    # The 32-bit arena is what the bound says it is: no more than the host's figure.
    assert 0 < arena <= budget.arena, (arena, budget)
    assert 0 < stack <= budget.stack, (stack, budget)
    ram, arena_array = ram_sections(project / "build/hifive1-reva-qemu/firmware.elf")
    assert arena_array == budget.arena
    assert ram - arena_array <= budget.static, ("static RAM", ram - arena_array, budget)


def test_instruction_counts_are_repeatable(tmp_path):
    flatbuffer = _models.build("mlp")
    inputs = _models.random_inputs(flatbuffer, 2)
    project = micro_project.generate_project(flatbuffer, tmp_path / "mlp", test_inputs=inputs)
    first = STATS.search(build_and_run(project).uart_text).groups()
    second = STATS.search(toolchain.run_qemu(
        project / "build/hifive1-reva-qemu/firmware.elf").uart_text).groups()
    assert first == second


def test_second_project_reuses_cached_tflm_objects(tmp_path):
    flatbuffer = _models.build("mlp")
    first, second = (micro_project.generate_project(flatbuffer, tmp_path / n) for n in "ab")
    tflm.make(first, "qemu-elf")
    log = tflm.make(second, "qemu-elf").stdout
    assert "into the object cache" not in log and "LD build/" in log, log


def test_board_build_links_for_hifive1_revb(tmp_path):
    project = micro_project.generate_project(_models.build("small_cnn"), tmp_path / "cnn")
    tflm.make(project)
    elf = project / "build/hifive1-revb/firmware.elf"
    entry = subprocess.run([toolchain.find_toolchain().tool("nm"), str(elf)],
                           capture_output=True, text=True, check=True).stdout
    assert re.search(r"^20010000 T _start$", entry, re.M), "Rev B programs start at 0x20010000"
    assert (project / "build/hifive1-revb/firmware.hex").is_file()


def test_every_supported_op_links_and_runs(tmp_path):
    """Each op in tflm.OPS: its resolver call exists and its listed sources suffice."""
    flatbuffer = _models.build("mlp")
    project = micro_project.generate_project(flatbuffer, tmp_path / "all_ops", kernels="reference")
    main_cc = (project / "main.cc").read_text()
    calls = "\n".join(f"  TF_LITE_ENSURE_STATUS(op_resolver.{k.resolver_call}());"
                      for k in tflm.OPS.values())
    main_cc = re.sub(r"MicroMutableOpResolver<\d+>", f"MicroMutableOpResolver<{len(tflm.OPS)}>",
                     main_cc)
    main_cc = re.sub(r"(RegisterOps\(OpResolver& op_resolver\) \{\n).*?(\n  return kTfLiteOk;)",
                     lambda m: m.group(1) + calls + m.group(2), main_cc, flags=re.S)
    (project / "main.cc").write_text(main_cc)
    makefile = (project / "Makefile").read_text()
    sources = " \\\n".join(f"\t{s}" for s in tflm.kernel_sources(tflm.OPS))
    makefile = re.sub(r"(TFLM_KERNEL_SRCS := \\\n).*?\n\n", lambda m: m.group(1) + sources + "\n\n",
                      makefile, flags=re.S)
    stack = micro_project.stack_reservation(len(tflm.OPS))
    makefile = re.sub(r"^STACK_BYTES := \d+$", f"STACK_BYTES := {stack}", makefile, flags=re.M)
    (project / "Makefile").write_text(makefile)

    run = build_and_run(project)
    assert run.exit_code == 0, run.uart_text[-2000:]
    assert "OUTPUT 0 " in run.uart_text
    assert int(STATS.search(run.uart_text).group(3)) <= stack


def test_each_op_links_from_its_own_sources(tmp_path):
    """Each op alone links with the framework and only its listed sources.

    One object holds a probe function per op; each link makes one probe the entry
    point, and --gc-sections keeps just what that op reaches, so a source missing
    from its list is an undefined reference.
    """
    project = micro_project.generate_project(_models.build("mlp"), tmp_path / "probe",
                                             kernels="reference")
    makefile = project / "Makefile"
    text = makefile.read_text()
    all_kernels = " \\\n".join(f"\t{s}" for s in tflm.kernel_sources(tflm.OPS))
    makefile.write_text(re.sub(r"(TFLM_KERNEL_SRCS := \\\n).*?\n\n",
                               lambda m: m.group(1) + all_kernels + "\n\n", text, flags=re.S))
    tflm.make(project, "qemu-elf")  # compiles every kernel in the table

    def make_var(name):
        return tflm.make(project, "-s", "--no-print-directory", f"print-{name}").stdout.strip()

    cache = make_var("OBJ_CACHE")
    probes = "\n".join(
        f'extern "C" void probe_{op}() {{ static tflite::MicroMutableOpResolver<1> r; '
        f"r.{k.resolver_call}(); }}" for op, k in tflm.OPS.items())
    (project / "probe.cc").write_text(
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"\n' + probes + "\n")
    tc = toolchain.find_toolchain()
    cxxflags = make_var("CXXFLAGS").split()
    subprocess.run([*tc.cxx, *cxxflags, "-O2", "-c", "probe.cc", "-o", "probe.o"], cwd=project,
                   check=True)
    platform = [f"build/hifive1-reva-qemu/{o}.o" for o in ("fe310", "uart", "tflm_port")]
    framework = [f"{cache}/{s[:-3]}.o" for s in tflm.FRAMEWORK_SOURCES]
    failed = {}
    for op, kernel in tflm.OPS.items():
        link = subprocess.run(
            [tc.gcc, *tflm.ARCH_FLAGS, "-specs=picolibc.specs", "-nostartfiles",
             "-Lfe310", "-T", "hifive1-reva.ld", f"-Wl,-e,probe_{op}", "-Wl,--gc-sections",
             "probe.o", *platform, *framework,
             *(f"{cache}/{s[:-3]}.o" for s in kernel.sources), "-lm", "-o", f"probe_{op}.elf"],
            cwd=project, capture_output=True, text=True)
        if link.returncode:
            failed[op] = re.findall(r"undefined reference to `([^']+)'", link.stderr)[:3] or \
                link.stderr[-300:]
    assert not failed, f"ops whose sources in converters/tflm.py OPS are incomplete: {failed}"


def test_op_table_matches_the_tflm_tree():
    root = tflm.source_root() / "tflite-micro"
    header = (root / "tensorflow/lite/micro/micro_mutable_op_resolver.h").read_text()
    for op, kernel in tflm.OPS.items():
        method = re.search(rf"TfLiteStatus {kernel.resolver_call}\((.*?)\n  }}", header, re.S)
        assert method and f"BuiltinOperator_{op}," in method.group(1), (op, kernel)
        register = re.search(r"Register_(\w+)\(\)", method.group(1)).group(0)
        defining = [s for s in kernel.sources if register in (root / s).read_text()]
        assert defining, f"{op}: none of {kernel.sources} defines {register}"
    listed = (root / "tensorflow/lite/micro/tools/make/Makefile").parent / "sources.inc"
    for source in tflm.FRAMEWORK_SOURCES + tflm.kernel_sources(tflm.OPS):
        assert (root / source).is_file(), source
    for source in tflm.HOST_PORT_SOURCES:
        assert (root / source).is_file() and source not in tflm.FRAMEWORK_SOURCES
    assert "kernels/conv_common.cc" in listed.read_text()
