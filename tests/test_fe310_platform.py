"""The FE310 platform layer (micro/fe310) built with the real toolchain and run in QEMU."""
import re
import subprocess
from pathlib import Path

import pytest

from tflq.converters import firmware_run, flash_reads, toolchain
from tflq.converters.toolchain import FE310_DIR
from tflq.errors import TflqError

LOOP_N = 1000  # SELFTEST_LOOP_N in selftest.c
STACK_BUF = 600  # SELFTEST_STACK_BUF in selftest.c
DEFAULT_STACK = 2048


@pytest.fixture(scope="module")
def tc():
    try:
        found = toolchain.find_toolchain()
        toolchain.find_qemu()
    except TflqError as e:
        pytest.skip(str(e))
    return found


def build(tc, out_dir: Path, sources, board="hifive1-reva", semihosting=True,
          stack_size=None, includes=()) -> Path:
    """Compiles and links sources (paths or (filename, text)) with the platform layer."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [FE310_DIR / s for s in toolchain.PLATFORM_C_SOURCES]
    for src in sources:
        if isinstance(src, tuple):
            path = out_dir / src[0]
            path.write_text(src[1])
            src = path
        paths.append(Path(src))
    objects = []
    for src in paths:
        obj = out_dir / f"{src.stem}.o"
        flags = (tc.cxx_flags(semihosting) if src.suffix == ".cc" else tc.c_flags(semihosting))
        compiler = list(tc.cxx) if src.suffix == ".cc" else [tc.gcc]
        run([*compiler, *flags, *includes, "-Os", "-Wall", "-Wextra", "-Werror",
             "-c", str(src), "-o", str(obj)])
        objects.append(str(obj))
    elf = out_dir / "fw.elf"
    run([tc.gcc, *tc.link_flags(board, stack_size), *objects, "-o", str(elf)])
    return elf


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr}")


def symbol(tc, elf, name) -> int:
    out = subprocess.run([tc.tool("nm"), str(elf)], check=True, capture_output=True,
                         text=True).stdout
    match = re.search(rf"^([0-9a-f]+) \w {re.escape(name)}$", out, re.M)
    assert match, f"{name} not in {elf}"
    return int(match.group(1), 16)


@pytest.fixture(scope="module")
def selftest_elf(tc, tmp_path_factory):
    return build(tc, tmp_path_factory.mktemp("selftest"), [FE310_DIR / "selftest.c"])


def test_selftest_prints_counts_and_exits_with_its_code(selftest_elf):
    result = toolchain.run_qemu(selftest_elf, timeout_s=60)
    lines = result.uart_text.splitlines()
    assert lines[0] == "tflq fe310 selftest"
    assert lines[1] == "printf: -12345 ok 0xbeef"  # picolibc stdout reaches the UART
    assert lines[-1] == "selftest done"
    assert result.exit_code == 3

    loop = dict(kv.split("=") for kv in lines[2].split())
    # The loop itself retires 1 + 2N instructions (li; N x addi+bnez); the 64-bit
    # counter read adds a few of its own (csrr, compare, branch) around it.
    expected = 1 + 2 * LOOP_N
    assert int(loop["loop_n"]) == LOOP_N
    assert expected <= int(loop["loop_instret"]) <= expected + 16, lines[2]
    assert expected <= int(loop["loop_cycles"]) <= expected + 16, lines[2]

    stack = dict(kv.split("=") for kv in lines[4].split())
    assert int(stack["stack_size"]) == DEFAULT_STACK
    # use_stack() holds a 600-byte buffer below main's frame, so the painted
    # measurement must see at least that, and cannot exceed the stack.
    assert STACK_BUF < int(stack["stack_bytes"]) < DEFAULT_STACK


def test_instruction_counts_are_deterministic(selftest_elf):
    first = toolchain.run_qemu(selftest_elf, timeout_s=60).uart_text
    second = toolchain.run_qemu(selftest_elf, timeout_s=60).uart_text
    counts = [re.search(r"^loop_n=.*$", text, re.M).group(0) for text in (first, second)]
    assert counts[0] == counts[1]
    assert first == second


def test_too_much_ram_fails_the_link_with_a_plain_message(tc, tmp_path):
    big = ("big.c", "volatile char arena[20 * 1024];\n"
                    "int main(void) { arena[1] = 1; return arena[1]; }\n")
    with pytest.raises(AssertionError, match=r"tflq: RAM overflow: stack \+ \.data \+ \.bss "
                                             r"do not fit in the FE310's 16 KiB"):
        build(tc, tmp_path, [big])


def test_stack_size_override_counts_against_ram(tc, tmp_path):
    # 12 KiB of .bss fits beside a 2 or 3 KiB stack, not beside 4 KiB (the platform
    # layer has a few bytes of .bss of its own).
    arena = ("arena.c", "volatile char arena[12 * 1024];\n"
                        "int main(void) { arena[1] = 1; return arena[1]; }\n")
    elf = build(tc, tmp_path / "default", [arena])
    assert symbol(tc, elf, "__stack") - symbol(tc, elf, "__tflq_stack_bottom") == DEFAULT_STACK
    elf = build(tc, tmp_path / "3k", [arena], stack_size=3072)
    assert symbol(tc, elf, "__stack") - symbol(tc, elf, "__tflq_stack_bottom") == 3072
    with pytest.raises(AssertionError, match="tflq: RAM overflow"):
        build(tc, tmp_path / "4k", [arena], stack_size=4096)


@pytest.mark.parametrize("board, origin", [("hifive1-reva", 0x20400000),
                                           ("hifive1-revb", 0x20010000)])
def test_start_is_the_first_byte_of_the_program(tc, tmp_path, board, origin):
    elf = build(tc, tmp_path, [FE310_DIR / "selftest.c"], board=board, semihosting=False)
    assert symbol(tc, elf, "_start") == origin
    headers = subprocess.run([tc.tool("readelf"), "-lW", str(elf)], check=True,
                             capture_output=True, text=True).stdout
    loads = [int(m.group(1), 16) for m in re.finditer(r"^\s+LOAD\s+\S+\s+\S+\s+(0x[0-9a-f]+)",
                                                      headers, re.M)]
    assert min(a for a in loads if a >= 0x20000000) == origin  # nothing precedes _start
    assert symbol(tc, elf, "__tflq_stack_bottom") == 0x80000000
    assert symbol(tc, elf, "__bss_end") <= 0x80000000 + 16 * 1024


def test_illegal_instruction_is_reported_and_exits(tc, tmp_path):
    src = ("trap.c", '#include <stdio.h>\n'
                     'int main(void) { printf("before\\n"); __asm__ volatile(".word 0");\n'
                     '  printf("after\\n"); return 0; }\n')
    result = toolchain.run_qemu(build(tc, tmp_path, [src]), timeout_s=60)
    assert "before" in result.uart_text and "after" not in result.uart_text
    assert "tflq: trap mcause=0x00000002" in result.uart_text  # illegal instruction
    assert result.exit_code == 70  # TFLQ_EXIT_TRAP


def test_stack_overflow_traps_instead_of_corrupting_ram(tc, tmp_path):
    # The stack sits at the bottom of RAM: overflowing it stores below 0x80000000.
    src = ("deep.c",
           '#include <stdio.h>\n'
           '__attribute__((noinline)) static int deep(int n) {\n'
           '  volatile char b[256]; b[0] = (char)n;\n'
           '  return n == 0 ? b[0] : deep(n - 1) + b[0]; }\n'
           'int main(void) { printf("%d\\n", deep(100)); return 0; }\n')
    result = toolchain.run_qemu(build(tc, tmp_path, [src]), timeout_s=60)
    match = re.search(r"tflq: trap mcause=0x00000007 mepc=0x\w+ mtval=0x(\w+)", result.uart_text)
    assert match, result.uart_text  # store access fault
    assert 0x80000000 - 512 <= int(match.group(1), 16) < 0x80000000
    assert result.exit_code == 70


def test_board_build_never_exits_and_run_qemu_times_out(tc, tmp_path):
    # Without TFLQ_SEMIHOSTING, _exit parks the core: QEMU must be killed.
    elf = build(tc, tmp_path, [FE310_DIR / "selftest.c"], semihosting=False)
    with pytest.raises(TflqError, match=r"did not exit within 5 s(.|\n)*selftest done"):
        toolchain.run_qemu(elf, timeout_s=5)


@pytest.mark.firmware
def test_tflm_port_hooks(tc, tmp_path, firmware_tools):
    tflm = Path(firmware_tools) / "tflite-micro"
    main = ("port_main.cc",
            '#include <cstdint>\n'
            '#include <cstdio>\n'
            '#include "tensorflow/lite/micro/micro_log.h"\n'
            '#include "tensorflow/lite/micro/micro_time.h"\n'
            '#include "tensorflow/lite/micro/system_setup.h"\n'
            'int main() {\n'
            '  tflite::InitializeTarget();\n'
            '  uint32_t t0 = tflite::GetCurrentTimeTicks();\n'
            '  MicroPrintf("tflm says %d", 42);\n'
            '  uint32_t t1 = tflite::GetCurrentTimeTicks();\n'
            '  char buf[16];\n'
            '  MicroSnprintf(buf, sizeof buf, "%s-%d", "snp", 7);\n'
            '  printf("%s hz=%lu ticks=%lu\\n", buf,\n'
            '         (unsigned long)tflite::ticks_per_second(), (unsigned long)(t1 - t0));\n'
            '  return 5;\n'
            '}\n')
    elf = build(tc, tmp_path, [main, FE310_DIR / "tflm_port.cc",
                               tflm / "tensorflow/lite/micro/micro_log.cc"],
                includes=[f"-I{tflm}"])
    result = toolchain.run_qemu(elf, timeout_s=60)
    lines = result.uart_text.splitlines()
    assert lines[0] == "tflm says 42"
    match = re.fullmatch(r"snp-7 hz=16000000 ticks=(\d+)", lines[1])
    assert match, result.uart_text
    assert 100 < int(match.group(1)) < 5000  # mcycle moved over one short MicroPrintf
    assert result.exit_code == 5


def test_missing_tools_name_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    toolchain.find_toolchain.cache_clear()
    try:
        with pytest.raises(TflqError, match="install gcc-riscv64-unknown-elf"):
            toolchain.find_toolchain()
        with pytest.raises(TflqError, match="install qemu-system-misc"):
            toolchain.find_qemu()
    finally:
        toolchain.find_toolchain.cache_clear()


def test_missing_cxx_headers_name_the_debian_package(tc, monkeypatch, tmp_path):
    if not tc.cxx_isystem:
        pytest.skip("this toolchain has its own C++ headers")
    monkeypatch.setattr(toolchain, "_ARM_CXX_ROOT", str(tmp_path))
    toolchain.find_toolchain.cache_clear()
    try:
        with pytest.raises(TflqError, match="install libstdc\\+\\+-arm-none-eabi-dev"):
            toolchain.find_toolchain()
    finally:
        toolchain.find_toolchain.cache_clear()


def test_flash_reads_are_counted_as_the_flash_controller_serves_them(tc, tmp_path):
    # 1,000 byte loads in a row (the first one isolated, the rest sequential), then 64
    # word loads 64 bytes apart (each isolated), all from .rodata in flash.
    src = ("flash.c",
           '#include <stdint.h>\n#include "perf.h"\n'
           'static const uint8_t bytes[1000] = {1, 2, 3};\n'
           'static const uint32_t words[16 * 64] = {4, 5, 6};\n'
           'volatile uint32_t sink;\n'
           'int main(void) {\n'
           '  uint32_t sum = 0;\n'
           '  TFLQ_FLASH_WINDOW(1);\n'
           '  for (int i = 0; i < 1000; ++i) sum += ((const volatile uint8_t *)bytes)[i];\n'
           '  for (int i = 0; i < 64; ++i)\n'
           '    sum += ((const volatile uint32_t *)words)[16 * i + 1];\n'
           '  TFLQ_FLASH_WINDOW(0);\n'
           '  sink = sum;\n'
           '  return 0;\n}\n')
    elf = build(tc, tmp_path, [src], includes=[f"-I{FE310_DIR}"])
    assert 0x20000000 <= symbol(tc, elf, "bytes") < 0x40000000  # the arrays are in flash
    log = tmp_path / "flash.txt"
    result = toolchain.run_qemu(elf, timeout_s=60, extra=flash_reads.qemu_args(log))
    assert result.exit_code == 0
    reads = flash_reads.parse(log.read_text())
    assert reads == flash_reads.FlashReads(windows=1, loads=1064, bytes=1000 + 64 * 4,
                                           seq_bytes=999, nonseq_loads=1 + 64)
    assert reads.silicon_cycles(10) == 10 + 64 * 999 + 500 * 65


def test_profile_counts_the_window_s_instructions_per_function(tc, tmp_path):
    # busy runs 100 times as many loop iterations as brief, both inside the window;
    # outside runs after it closes and must not be counted.
    src = ("profile.c",
           '#include <stdint.h>\n#include "perf.h"\n'
           'volatile uint32_t sink;\n'
           '#define SPIN(name) __attribute__((noinline)) void name(int n) {'
           ' for (int i = 0; i < n; ++i) sink += i; }\n'
           'SPIN(busy) SPIN(brief) SPIN(outside)\n'
           'int main(void) {\n'
           '  TFLQ_FLASH_WINDOW(1);\n'
           '  busy(1000);\n  brief(10);\n'
           '  TFLQ_FLASH_WINDOW(0);\n'
           '  outside(1000);\n'
           '  return 0;\n}\n')
    elf = build(tc, tmp_path, [src], includes=[f"-I{FE310_DIR}"])
    log, profile = tmp_path / "flash.txt", tmp_path / "profile.txt"
    result = toolchain.run_qemu(elf, timeout_s=60, extra=flash_reads.qemu_args(log, profile))
    assert result.exit_code == 0
    functions = flash_reads.functions(profile.read_text(), firmware_run.function_symbols(elf))
    assert "outside" not in functions, functions
    assert functions["busy"] > 50 * functions["brief"] > 0, functions
    assert list(functions)[0] == "busy"


def test_flash_reads_without_a_window_is_one_clear_error():
    with pytest.raises(TflqError, match="fw.elf: the flash-read plugin saw no measured window"):
        flash_reads.parse("", "fw.elf")
