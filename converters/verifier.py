"""The flatbuffers Verifier (C++, header-only) over TFLite's schema, called through ctypes.

The Python flatbuffers runtime has no verifier, so tflq builds the maintained one from
the TFLM tree's flatbuffers and schema headers (``micro/host/verify.cc``) once into
``$TFLQ_CACHE_DIR/host-lib``. ``verify`` returns None when no local TFLM tree is
available (``TFLQ_TFLM_ROOT``, ``TFLQ_TFLM_ARCHIVE`` or an earlier download): nothing is
downloaded for it.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
from pathlib import Path

from tflq.converters import tflm_sources
from tflq.converters.micro_dir import MICRO_DIR

SOURCE = MICRO_DIR / "host" / "verify.cc"


@functools.lru_cache(maxsize=None)
def _library(root: Path):
    from tflq.converters.tflm_host import _cxx  # the host compiler, found once

    cxx = _cxx()
    key = hashlib.sha256(f"{root.resolve()}\n{SOURCE.read_text()}".encode()).hexdigest()[:16]
    lib = tflm_sources.cache_dir() / "host-lib" / f"tflq-verify-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.tmp")
        subprocess.run([cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
                        f"-I{root / 'flatbuffers' / 'include'}", f"-I{root / 'tflite-micro'}",
                        str(SOURCE), "-o", str(tmp)], check=True, capture_output=True)
        os.replace(tmp, lib)
    verify = ctypes.CDLL(str(lib)).tflq_verify_model
    verify.restype, verify.argtypes = ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t]
    return verify


def verify(flatbuffer: bytes) -> bool | None:
    """True if the Verifier accepts the bytes, False if not, None if it is not available."""
    root = tflm_sources.local_root()
    if root is None:
        return None
    return bool(_library(root)(bytes(flatbuffer), len(flatbuffer)))
