"""Aliases -> quantizers. ``get`` accepts an alias, an instance or a config dict."""
from __future__ import annotations

import difflib
import re
from typing import Callable

from tflq.errors import TflqError
from tflq.quantizers.base import WeightQuantizer, from_config_spec

_FACTORIES: dict[str, Callable[[], WeightQuantizer]] = {}
_CLASSES: dict[str, type] = {}
# Every registered alias, in registration order. The same list object is exported as
# ``tflq.quantizers.ALIASES`` and grows in place, so an alias registered later
# (by tflq or a user) shows up there too.
ALIASES: list[str] = []


def register(alias: str, factory: Callable[[], WeightQuantizer]) -> None:
    """Registers ``alias``; ``factory()`` returns a new WeightQuantizer (a class
    with default arguments, or a lambda)."""
    if not isinstance(alias, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", alias):
        raise TflqError(f"quantizer alias {alias!r}: use lower-case letters, digits and _")
    if alias in _FACTORIES:
        raise TflqError(f"quantizer alias {alias!r} is registered twice")
    sample = factory()
    if not isinstance(sample, WeightQuantizer):
        raise TflqError(f"quantizer alias {alias!r}: the factory returned {sample!r}, "
                        f"not a tflq.quantizers.WeightQuantizer")
    _FACTORIES[alias] = factory
    _CLASSES[type(sample).__name__] = type(sample)
    ALIASES.append(alias)


def aliases() -> tuple[str, ...]:
    return tuple(ALIASES)


def get(spec) -> WeightQuantizer:
    """A quantizer from an alias (``"log3"``), a WeightQuantizer (returned as is),
    or a config dict ``{"class_name": ..., "config": ...}`` (``get_config()``)."""
    if isinstance(spec, WeightQuantizer):
        return spec
    if isinstance(spec, str):
        if spec in _FACTORIES:
            return _FACTORIES[spec]()
        _explain_bits(spec)
        near = difflib.get_close_matches(spec.strip().lower(), ALIASES, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise TflqError(f"unknown quantizer {spec!r}{hint}: choose one of {', '.join(ALIASES)}")
    if isinstance(spec, dict) and set(spec) == {"class_name", "config"}:
        return from_config_spec(spec, _CLASSES, "quantizer")
    raise TflqError(f"not a quantizer: {spec!r} (give an alias such as 'log3', a "
                    f"WeightQuantizer, or its {{'class_name': ..., 'config': ...}})")


def _explain_bits(alias: str) -> None:
    """For '<family><bits>' with a known family but bits out of range (log5,
    dorefa9, ...): raises the family's own explanation of its range."""
    match = re.fullmatch(r"([a-z][a-z0-9_]*?)(\d+)", alias.strip().lower())
    if not match:
        return
    family, bits = match.group(1), int(match.group(2))
    for cls in _CLASSES.values():
        if cls.family == family and not cls.min_bits <= bits <= cls.max_bits:
            raise TflqError(f"quantizer {alias!r}: " + cls._bits_error(cls.__new__(cls), bits)
                            + f". Valid {family} aliases: "
                            + ", ".join(a for a in ALIASES if a.startswith(family)))
