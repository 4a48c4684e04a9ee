"""A cc_toolchain for Debian's riscv64-unknown-elf-gcc + picolibc, rv32imac/ilp32."""

load("@bazel_tools//tools/build_defs/cc:action_names.bzl", "ACTION_NAMES")
load(
    "@bazel_tools//tools/cpp:cc_toolchain_config_lib.bzl",
    "feature",
    "flag_group",
    "flag_set",
    "tool_path",
)

_COMPILE = [
    ACTION_NAMES.assemble,
    ACTION_NAMES.preprocess_assemble,
    ACTION_NAMES.c_compile,
    ACTION_NAMES.cpp_compile,
]
_CXX = [ACTION_NAMES.cpp_compile]
_LINK = [ACTION_NAMES.cpp_link_executable]

def _impl(ctx):
    arch = ["-march=rv32imac", "-mabi=ilp32", "-mcmodel=medlow", "-specs=picolibc.specs"]
    features = [
        feature(
            name = "fe310_flags",
            enabled = True,
            flag_sets = [
                flag_set(actions = _COMPILE, flag_groups = [flag_group(flags = arch + [
                    "-ffunction-sections",
                    "-fdata-sections",
                    "-Wall",
                ])]),
                flag_set(actions = _CXX, flag_groups = [flag_group(flags = [
                    "-std=c++17",
                    "-fno-rtti",
                    "-fno-exceptions",
                    "-fno-threadsafe-statics",
                    "-fno-use-cxa-atexit",
                    "-fno-unwind-tables",
                    "-fno-asynchronous-unwind-tables",
                    # Debian has no C++ headers for this target; the arm-none-eabi
                    # ones are header-only-compatible (see micro/fe310/README.md).
                    "-nostdinc++",
                    "-isystem",
                    ctx.attr.cxx_include,
                    "-isystem",
                    ctx.attr.cxx_config_include,
                ])]),
                flag_set(actions = _LINK, flag_groups = [flag_group(flags = arch + [
                    "--crt0=hosted",
                    "-Wl,--gc-sections",
                ])]),
            ],
        ),
        feature(
            name = "opt",
            flag_sets = [flag_set(actions = _COMPILE, flag_groups = [flag_group(flags = ["-Os"])])],
        ),
        feature(name = "dbg"),
        feature(name = "fastbuild"),
        feature(name = "supports_dynamic_linker", enabled = False),
    ]
    tools = {
        "gcc": "/usr/bin/riscv64-unknown-elf-gcc",
        "ld": "/usr/bin/riscv64-unknown-elf-ld",
        "ar": "/usr/bin/riscv64-unknown-elf-ar",
        "cpp": "/usr/bin/riscv64-unknown-elf-cpp",
        "nm": "/usr/bin/riscv64-unknown-elf-nm",
        "objdump": "/usr/bin/riscv64-unknown-elf-objdump",
        "strip": "/usr/bin/riscv64-unknown-elf-strip",
        "gcov": "/bin/false",
    }
    return cc_common.create_cc_toolchain_config_info(
        ctx = ctx,
        toolchain_identifier = "riscv64-unknown-elf-rv32imac",
        host_system_name = "x86_64-linux-gnu",
        target_system_name = "riscv32-unknown-elf",
        target_cpu = "rv32imac",
        target_libc = "picolibc",
        compiler = "gcc",
        abi_version = "ilp32",
        abi_libc_version = "picolibc",
        features = features,
        tool_paths = [tool_path(name = k, path = v) for k, v in tools.items()],
        cxx_builtin_include_directories = [
            "/usr/lib/gcc/riscv64-unknown-elf/12.2.0/include",
            "/usr/lib/gcc/riscv64-unknown-elf/12.2.0/include-fixed",
            "/usr/lib/picolibc/riscv64-unknown-elf/include",
            "/usr/include/newlib/c++/12.2.1",
        ],
    )

riscv_elf_toolchain_config = rule(
    implementation = _impl,
    attrs = {
        "cxx_include": attr.string(default = "/usr/include/newlib/c++/12.2.1"),
        "cxx_config_include": attr.string(
            default = "/usr/include/newlib/c++/12.2.1/arm-none-eabi/thumb/v7-m/nofp",
        ),
    },
    provides = [CcToolchainConfigInfo],
)
