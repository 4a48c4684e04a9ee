"""Where tflq's C and C++ sources are: the repository's ``micro/``.

In a checkout or an editable install it sits beside ``converters/``. A wheel installs
``converters/`` as ``tflq/converters/`` and ``micro/`` as ``tflq/_micro/`` (setup.cfg's
``package_dir``; ``tflq/micro.py`` already owns the name ``tflq.micro``).
"""
from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find() -> Path:
    for candidate in (_HERE.parent / "micro", _HERE.parent / "_micro"):
        if (candidate / "kernels").is_dir():
            return candidate
    raise FileNotFoundError(f"tflq's micro/ sources are missing beside {_HERE}: reinstall tflq")


MICRO_DIR = _find()
