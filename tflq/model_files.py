"""Keras model files are data: their stored config is read and checked before anything in
them is deserialized.

A ``Lambda`` layer's config carries Python bytecode that loading runs (the class of
Keras's CVE-2024-3660; tf_keras's ``safe_mode`` does not cover legacy ``.h5``), and a
custom class tflq does not know can run whatever its ``from_config`` does. ``load``
reads the config (``.h5``: the ``model_config`` attribute, through h5py; ``.keras``:
``config.json`` in the zip) and refuses such layers, naming them, unless the caller
trusts the file (``allow_unsafe=True``; the CLI's ``--allow_unsafe_deserialization``).
"""
from __future__ import annotations

import json
import os
import zipfile

from tflq.errors import TflqError

# Beyond tf_keras's own layers and models: tfmot's wrappers and quantizer configs and
# tflq's registered classes, which a tflq QAT model holds.
_TRUSTED_EXTRA = {"QuantizeWrapperV2", "QuantizeWrapper", "QuantizeLayer", "QuantizeAnnotate",
                  "LowBitQuantizeConfig", "LowBitWeightQuantizer", "Default8BitQuantizeConfig",
                  "Default8BitConvQuantizeConfig", "NoOpQuantizeConfig",
                  "Default8BitOutputQuantizeConfig", "Default8BitActivationQuantizeConfig",
                  "ProjectionProfiles", "tflq>ProjectionProfiles", "Functional", "Sequential",
                  "Model"}
_CODE_LAYERS = {"Lambda"}


def stored_config(path: str) -> dict:
    """The model config a file stores, read without deserializing it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        import h5py
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise TflqError(f"{path}: an HDF5 file without a Keras model config "
                                "(weights only?)")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except TflqError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise TflqError(f"{path}: not a tf_keras model file (.h5 or .keras): {e}") from None


def unsafe_layers(config, known: set[str]) -> list[str]:
    """``'name' (Class)`` of every layer or object in ``config`` that carries code or whose
    class tflq does not know, depth first."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            cls = node.get("class_name")
            config = node.get("config") if isinstance(node.get("config"), dict) else {}
            if isinstance(cls, str):
                name = config.get("name", "?")
                if cls in _CODE_LAYERS or "function" in config:
                    found.append(f"{name!r} ({cls}: it carries Python code)")
                elif cls not in known and cls.split(">")[-1] not in known:
                    found.append(f"{name!r} ({cls}: a class tflq does not know)")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _known_classes() -> set[str]:
    import tf_keras as keras
    import tensorflow_model_optimization as tfmot
    from tflq import quantizers

    names = {n for n in dir(keras.layers) if n[:1].isupper()}
    from tensorflow_model_optimization.python.core.quantization.keras import (
        quantize_aware_activation)
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs, default_8bit_quantize_registry)

    # tfmot's own classes a QAT model's config names (wrappers, configs, quantizers).
    for module in (tfmot.quantization.keras.quantizers, quantize_aware_activation,
                   default_8bit_quantize_configs, default_8bit_quantize_registry):
        names |= {n for n in dir(module) if n[:1].isupper()}
    names |= {type(quantizers.get(alias)).__name__ for alias in quantizers.ALIASES}
    names |= {n for n in dir(keras.initializers) if n[:1].isupper()}
    names |= {n for n in dir(keras.regularizers) if n[:1].isupper()}
    names |= {n for n in dir(keras.constraints) if n[:1].isupper()}
    return names | _TRUSTED_EXTRA


def load(path: str, allow_unsafe: bool = False, flag: str = "--keras_model"):
    """The tf_keras model in ``path`` (float or tflq QAT), its config checked first."""
    import tf_keras as keras
    from tflq.qat import quantize_scope

    if not os.path.exists(path):
        raise TflqError(f"{flag} {path}: no such file")
    if os.path.isdir(path):
        raise TflqError(f"{flag} {path}: a directory (SavedModel?); tflq reads .h5 or .keras files")
    if not allow_unsafe:
        bad = unsafe_layers(stored_config(path), _known_classes())
        if bad:
            raise TflqError(f"{flag} {path}: refusing to load layer {bad[0]}"
                            + (f" and {len(bad) - 1} more" if len(bad) > 1 else "")
                            + "; pass --allow_unsafe_deserialization only for a file you trust")
    try:
        with quantize_scope():
            if zipfile.is_zipfile(path):
                return keras.models.load_model(path, compile=False, safe_mode=not allow_unsafe)
            return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise TflqError(f"{flag} {path}: not a tf_keras model file "
                        f"({' '.join(str(e).split())[:300]})") from None
