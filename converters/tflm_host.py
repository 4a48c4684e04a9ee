"""The device's bit-exact reference: TFLite-Micro built for the host from the firmware's sources.

``Interpreter`` runs a flatbuffer on TFLM compiled for x86-64 with the system C++
compiler, from the same tree the firmware builds (``tflm.source_root()``), with the
same kernel sources (``firmware_kernels.plan``: TFLM's reference kernels or tflq's,
and the TFLQ_PACKED op for packed models) and the same op registrations, behind the
C API of ``micro/host/tflm_host.cc`` (ctypes). Every model passes the flatbuffers
Verifier before TFLM reads it.

TFLM's objects are compiled once into ``$TFLQ_CACHE_DIR/host-obj/<key>`` (the key
hashes the tree, its commit, the compiler and the flags) and each distinct kernel
set is linked once into ``$TFLQ_CACHE_DIR/host-lib/<key>.so``.

Only where no TFLM sources can be had does ``predict`` fall back to the
``tflite-micro`` wheel, a host interpreter built from another TFLM commit
(``tflm.HOST_WHEEL``); ``reference_name`` says which one a result came from. Host
arena figures are 64-bit sizes: never quote them as device numbers.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tflq.converters import firmware_kernels, tflm, tflm_sources
from tflq.converters import model as typed_model
from tflq.converters.micro_dir import MICRO_DIR
from tflq.errors import TflqError

HOST_API = MICRO_DIR / "host" / "tflm_host.cc"
ARENA_BYTES = 8 * 1024 * 1024
_FLATBUFFERS_PATCH = "tensorflow/lite/micro/tools/make/flatbuffers.patch"
# The host port: TFLM's own micro_time.cc and system_setup.cc; DebugLog is tflm_host.cc's.
_HOST_PORT = tuple(s for s in tflm.HOST_PORT_SOURCES if not s.endswith("debug_log.cc"))
_TYPES = {1: np.float32, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
          9: np.int8, 10: np.float16, 11: np.float64, 13: np.uint64, 15: np.uint32,
          16: np.uint16}
_NEW_ERRORS = {1: "it is not a valid TFLite flatbuffer (the flatbuffers Verifier rejects it)",
               2: "its schema version is not the one TFLM reads",
               3: "TFLM could not allocate its tensors",
               4: "the host is out of memory"}


def _cxx() -> str:
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None:
        raise TflqError("no host C++ compiler (c++/g++) to build TFLM's host reference: "
                        "apt-get install g++")
    return cxx


def host_cc() -> str:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise TflqError("no host C compiler (cc/gcc): apt-get install gcc")
    return cc


def _version(compiler: str) -> str:
    return subprocess.run([compiler, "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]


@dataclasses.dataclass(frozen=True)
class _Target:
    """How the host build is compiled: the reference library, or the ILP32 arena probe."""

    name: str
    flags: tuple[str, ...]  # added to the firmware's C++ flags (minus the rv32 ones) and -std=c11
    link: tuple[str, ...]


# The reference: a shared library for ctypes. Hidden symbols and -Bsymbolic: TensorFlow,
# loaded in the same process, exports tflite:: symbols of its own (other struct
# layouts), which must not interpose on these.
HOST64 = _Target("host-obj", ("-fPIC", "-fvisibility=hidden"), ("-shared", "-Wl,-Bsymbolic"))
# The arena probe: a 32-bit executable. i386 with -malign-double lays structs out as
# rv32's ilp32 does (4-byte pointers and size_t, 8-byte-aligned int64 and double), so
# TFLM's arena use is the firmware's, byte for byte (tests/test_firmware_qemu.py).
ILP32 = _Target("host-obj-ilp32", ("-m32", "-malign-double"), ("-m32",))
ARENA_PROBE = MICRO_DIR / "host" / "arena_probe.cc"


def _cxx_flags(target: _Target) -> tuple[str, ...]:
    return (*tflm.CXX_FLAGS, *target.flags)


def _run_all(commands: list[list[str]], what: str) -> None:
    def run(cmd):
        return cmd, subprocess.run(cmd, capture_output=True, text=True)

    workers = max(1, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for cmd, done in pool.map(run, commands):
            if done.returncode != 0:
                raise TflqError(f"building {what} failed: `{' '.join(cmd)}`:\n"
                                + "\n".join(done.stderr.splitlines()[-30:]))


@functools.lru_cache(maxsize=None)
def _object_dir(root: Path, target: _Target = HOST64) -> Path:
    """The host objects' folder for ``root``, with TFLM's patched flatbuffers headers."""
    cxx = _cxx()
    key = hashlib.sha256("\n".join((str(root.resolve()), tflm.local_commit(root), _version(cxx),
                                    " ".join(_cxx_flags(target)), tflm.FRAMEWORK_OPT,
                                    tflm.KERNEL_OPT)).encode()).hexdigest()[:16]
    objects = tflm_sources.cache_dir() / target.name / key
    include = objects / "flatbuffers" / "include"
    if not include.is_dir():
        objects.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".flatbuffers.tmp-{os.getpid()}-", dir=objects))
        try:
            shutil.copytree(root / "flatbuffers" / "include", tmp / "include", symlinks=True)
            subprocess.run(["patch", "-s", "-d", str(tmp), "-p1", "-i",
                            str(root / "tflite-micro" / _FLATBUFFERS_PATCH)], check=True,
                           capture_output=True)
            try:
                tmp.rename(objects / "flatbuffers")
            except OSError:
                if not include.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return objects


def _includes(root: Path, objects: Path) -> list[str]:
    return [f"-I{root / 'tflite-micro'}", f"-I{objects / 'flatbuffers' / 'include'}",
            f"-I{root / 'gemmlowp'}", f"-I{root / 'ruy'}"]


def _tflm_objects(root: Path, sources: tuple[str, ...], target: _Target) -> list[Path]:
    """Host objects of TFLM ``sources`` (paths under tflite-micro/), compiling the missing."""
    objects = _object_dir(root, target)
    cxx, include = _cxx(), _includes(root, objects)
    kernels = set(sources) - set(tflm.FRAMEWORK_SOURCES)
    todo, paths = [], []
    for source in sources:
        obj = objects / (source[:-3] + ".o")
        paths.append(obj)
        if not obj.exists():
            obj.parent.mkdir(parents=True, exist_ok=True)
            opt = tflm.KERNEL_OPT if source in kernels else tflm.FRAMEWORK_OPT
            tmp = f"{obj}.{os.getpid()}.tmp"
            todo.append((obj, tmp, [cxx, *_cxx_flags(target), opt, *include, "-c",
                                    str(root / "tflite-micro" / source), "-o", tmp]))
    _run_all([cmd for _, _, cmd in todo], f"TFLM for the host ({target.name})")
    for obj, tmp, _ in todo:
        os.replace(tmp, obj)
    return paths


def _build(root: Path, plan: firmware_kernels.KernelPlan, target: _Target) -> Path:
    """The host build of ``plan``'s kernels and registrations for ``target``, built once:
    a shared library (HOST64) or the arena probe executable (ILP32)."""
    tflm_files = tuple(dict.fromkeys((*tflm.FRAMEWORK_SOURCES, *_HOST_PORT, *plan.tflm_sources)))
    ops_h = (f"#define TFLQ_HOST_NUM_OPS {max(1, plan.num_registrations)}\n"
             + "".join(line + "\n" for line in plan.includes)
             + "#define TFLQ_HOST_REGISTER_OPS(op_resolver) do { \\\n"
             + "".join(f"    {call}; \\\n" for call in plan.resolver_calls) + "  } while (0)\n")
    own_sources = [HOST_API] + ([ARENA_PROBE] if target is ILP32 else [])
    digest = hashlib.sha256()
    for part in (str(_object_dir(root, target)), ops_h, "\n".join(tflm_files),
                 *(p.read_text() for p in own_sources)):
        digest.update(part.encode() + b"\0")
    for name in sorted(plan.project_files):
        digest.update(name.encode() + b"\0" + plan.project_files[name] + b"\0")
    suffix = ".so" if target is HOST64 else ""
    out = tflm_sources.cache_dir() / "host-lib" / f"tflm-{target.name}-{digest.hexdigest()[:16]}{suffix}"
    if out.exists():
        return out
    objects = _tflm_objects(root, tflm_files, target)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflq-host-", dir=out.parent) as tmp:
        src = Path(tmp)
        for name, data in plan.project_files.items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(data)
        (src / "tflq_host_ops.h").write_text(ops_h)
        include = [*_includes(root, _object_dir(root, target)), f"-I{src}",
                   f"-I{src / firmware_kernels.PROJECT_DIR}"]
        commands, own = [], []
        for path in (*(src / n for n in plan.project_sources), *own_sources):
            obj = src / f"{len(own)}.o"
            own.append(str(obj))
            if path.suffix == ".c":
                cmd = [host_cc(), "-std=c11", *target.flags, tflm.KERNEL_OPT, *include]
            else:
                cmd = [_cxx(), *_cxx_flags(target), tflm.KERNEL_OPT, *include,
                       '-DTFLQ_HOST_OPS_H="tflq_host_ops.h"']
            commands.append([*cmd, "-c", str(path), "-o", str(obj)])
        _run_all(commands, f"the host build ({target.name})")
        tmp_out = src / "out"
        _run_all([[_cxx(), *target.link, "-o", str(tmp_out), *own, *map(str, objects), "-lm"]],
                 f"linking the host build ({target.name})")
        os.replace(tmp_out, out)
    return out


_LOADED: dict[Path, ctypes.CDLL] = {}


def _library(root: Path, plan: firmware_kernels.KernelPlan) -> ctypes.CDLL:
    """The host reference library for ``plan``, loaded once."""
    lib = _build(root, plan, HOST64)
    if lib not in _LOADED:
        _LOADED[lib] = _bind(ctypes.CDLL(str(lib)))
    return _LOADED[lib]


@functools.lru_cache(maxsize=None)
def ilp32_available() -> bool:
    """Whether the host compiler builds and links 32-bit C++ (Debian: g++-multilib)."""
    with tempfile.TemporaryDirectory(prefix="tflq-m32-") as tmp:
        source = Path(tmp) / "probe.cc"
        source.write_text("#include <cstdint>\nint main() { return sizeof(void*) == 4 ? 0 : 1; }\n")
        done = subprocess.run([_cxx(), *ILP32.flags, str(source), "-o", str(Path(tmp) / "p")],
                              capture_output=True)
        return done.returncode == 0 and subprocess.run([str(Path(tmp) / "p")]).returncode == 0


@dataclasses.dataclass(frozen=True)
class ArenaUse:
    """TFLM's arena figures for one model on a 32-bit target (the ILP32 probe)."""

    used: int  # arena_used_bytes(): what the firmware's STATS line prints
    needed: int  # the smallest arena that works (Prepare's temporaries included)


def arena_bytes_ilp32(flatbuffer: bytes, plan: firmware_kernels.KernelPlan,
                      root: Path | None = None, name: str = "model") -> ArenaUse:
    """TFLM's arena use for ``flatbuffer`` with ``plan``'s kernels on a 32-bit target (the
    firmware's figures), from the ILP32 host build, run in a child process."""
    root = tflm.source_root() if root is None else root
    probe = _build(root, plan, ILP32)
    with tempfile.NamedTemporaryFile(suffix=".tflite") as f:
        f.write(bytes(flatbuffer))
        f.flush()
        try:
            done = subprocess.run([str(probe), f.name, str(ARENA_BYTES)], capture_output=True,
                                  text=True, timeout=180)
        except subprocess.TimeoutExpired:
            raise TflqError(f"{name}: TFLM (32-bit host build) did not finish allocating it "
                            "in 180 s") from None
    found = re.search(r"^ARENA (\d+) (\d+)$", done.stdout, re.M)
    if done.returncode != 0 or not found:
        why = (f"crashed (signal {-done.returncode})" if done.returncode < 0
               else " ".join((done.stdout + done.stderr).split())[-400:])
        raise TflqError(f"{name}: TFLM (32-bit host build) could not allocate it: {why}")
    return ArenaUse(*map(int, found.groups()))


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, size, c_int = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    signatures = {
        "tflq_host_log": (ctypes.c_char_p, []),
        "tflq_host_new": (p, [ctypes.c_char_p, size, size, ctypes.POINTER(c_int)]),
        "tflq_host_free": (None, [p]),
        "tflq_host_count": (size, [p, c_int]),
        "tflq_host_tensor": (c_int, [p, c_int, size, ctypes.POINTER(size), ctypes.POINTER(c_int),
                                     ctypes.POINTER(c_int), c_int]),
        "tflq_host_set_input": (c_int, [p, size, p, size]),
        "tflq_host_invoke": (c_int, [p]),
        "tflq_host_get_output": (c_int, [p, size, p, size]),
        "tflq_host_arena_used": (size, [p]),
    }
    for name, (restype, argtypes) in signatures.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


class Interpreter:
    """One model on TFLM's host build (the firmware's sources and kernel choice).

    ``kernels`` is the firmware's choice ("reference" or "tflq"); the plan, and so the
    compiled kernel set, comes from ``firmware_kernels.plan(flatbuffer, kernels)``.
    Raises TflqError, naming ``name``, when the model cannot be read or allocated.
    """

    def __init__(self, flatbuffer: bytes, kernels: str = "reference",
                 arena_bytes: int = ARENA_BYTES, root: Path | None = None,
                 name: str = "model"):
        # TFLM reads no bytes that have not passed tflq's checks (and, in C, the Verifier).
        flatbuffer = typed_model.read(flatbuffer, name).flatbuffer
        root = tflm.source_root() if root is None else root
        plan = firmware_kernels.plan(flatbuffer, kernels)
        self._lib = _library(root, plan)
        status = ctypes.c_int(0)
        self._lib.tflq_host_log()
        handle = self._lib.tflq_host_new(flatbuffer, len(flatbuffer), arena_bytes,
                                         ctypes.byref(status))
        log = self._lib.tflq_host_log().decode(errors="replace").strip()
        if not handle:
            raise TflqError(f"{name}: TFLM's host build cannot run it: "
                            f"{_NEW_ERRORS.get(status.value, 'unknown error')}"
                            + (f" ({' '.join(log.split())})" if log else ""))
        self._handle = handle
        self.reference = f"TFLM {tflm.local_commit(root)} host build ({kernels} kernels)"
        self.inputs = [self._tensor(1, i) for i in range(self._lib.tflq_host_count(handle, 1))]
        self.outputs = [self._tensor(0, i) for i in range(self._lib.tflq_host_count(handle, 0))]

    def _tensor(self, is_input: int, index: int) -> tuple[tuple[int, ...], np.dtype]:
        nbytes, dims = ctypes.c_size_t(), ctypes.c_int()
        shape = (ctypes.c_int * 8)()
        t = self._lib.tflq_host_tensor(self._handle, is_input, index, ctypes.byref(nbytes),
                                       ctypes.byref(dims), shape, 8)
        if t not in _TYPES:
            raise TflqError(f"{'input' if is_input else 'output'} {index} has TfLiteType {t}, "
                            "which tflq's host reference does not read")
        return tuple(shape[:dims.value]), np.dtype(_TYPES[t])

    @property
    def arena_used_bytes(self) -> int:
        """The host's arena use: 64-bit sizes, an upper bound of the device's."""
        return int(self._lib.tflq_host_arena_used(self._handle))

    def invoke(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Outputs for one set of inputs, each shaped and typed as the model's tensors."""
        if len(inputs) != len(self.inputs):
            raise TflqError(f"the model takes {len(self.inputs)} input(s), got {len(inputs)}")
        for i, (x, (shape, dtype)) in enumerate(zip(inputs, self.inputs)):
            x = np.ascontiguousarray(x, dtype)
            if x.size != int(np.prod(shape)):
                raise TflqError(f"input {i}: {x.size} values, the model wants shape {shape}")
            if self._lib.tflq_host_set_input(self._handle, i, x.ctypes.data, x.nbytes):
                raise TflqError(f"input {i}: size mismatch")
        if self._lib.tflq_host_invoke(self._handle):
            log = self._lib.tflq_host_log().decode(errors="replace").strip()
            raise TflqError(f"TFLM's host build failed to invoke the model: {log}")
        outputs = []
        for i, (shape, dtype) in enumerate(self.outputs):
            y = np.empty(shape, dtype)
            self._lib.tflq_host_get_output(self._handle, i, y.ctypes.data, y.nbytes)
            outputs.append(y)
        return outputs

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.tflq_host_free(handle)


def reference_name(kernels: str = "reference") -> str:
    """Which reference ``predict`` uses here: the source-built host TFLM, or the wheel."""
    root = tflm.source_root(required=False)
    if root is None:
        return f"{tflm.HOST_WHEEL} wheel (TFLM {tflm.HOST_WHEEL_COMMIT}; no TFLM sources)"
    return f"TFLM {tflm.local_commit(root)} host build ({kernels} kernels)"


def predict(flatbuffer: bytes, inputs: np.ndarray, kernels: str = "reference") -> np.ndarray:
    """Outputs of a single-input, single-output model for a batch of inputs, one Invoke
    each, on the source-built host TFLM (the wheel where no sources can be had)."""
    inputs = np.asarray(inputs)
    if tflm.source_root(required=False) is None:
        return _wheel_predict(flatbuffer, inputs)
    interpreter = Interpreter(flatbuffer, kernels)
    return np.stack([interpreter.invoke(x)[0].reshape(-1) for x in inputs])


def _wheel_predict(flatbuffer: bytes, inputs: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime

    interpreter = runtime.Interpreter.from_bytes(bytes(flatbuffer))
    outputs = []
    for x in inputs:
        interpreter.set_input(x[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)).reshape(-1))
    return np.stack(outputs)
