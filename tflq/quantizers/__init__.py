"""Low-bit weight quantizers. Each maps a kernel (last axis = output channel) to
levels that are integer multiples k·Δ (|k| <= 127) of a per-channel step Δ, so an
int8 TFLite kernel with scale Δ holds them exactly.

    tflq.quantizers.get("log3")        # by alias; also an instance or a config dict
    tflq.quantizers.ALIASES            # every registered alias (a live list)
    tflq.quantizers.register("mine", lambda: MyQuantizer(3))

One module per family; each class's docstring has the formula and the paper:
log (log2..log4), ternary/twn, binary/bwn, ul2q1..ul2q7, dorefa1..dorefa7,
fixed2..fixed8, minmax2..minmax7.
"""
from tflq.quantizers.base import WeightQuantizer
from tflq.quantizers.binary import BinaryQuantizer
from tflq.quantizers.dorefa import DoReFaQuantizer
from tflq.quantizers.log import LogQuantizer
from tflq.quantizers.registry import ALIASES, aliases, get, register
from tflq.quantizers.ternary import TernaryQuantizer
from tflq.quantizers.ul2q import UL2QQuantizer
from tflq.quantizers.uniform import FixedPointQuantizer, MinMaxQuantizer


def _register_builtins():
    for bits in range(LogQuantizer.min_bits, LogQuantizer.max_bits + 1):
        register(f"log{bits}", lambda b=bits: LogQuantizer(b))
    register("ternary", TernaryQuantizer)
    register("twn", TernaryQuantizer)
    register("binary", lambda: BinaryQuantizer(per_channel=False))
    register("bwn", lambda: BinaryQuantizer(per_channel=True))
    for cls in (UL2QQuantizer, DoReFaQuantizer, FixedPointQuantizer, MinMaxQuantizer):
        for bits in range(cls.min_bits, cls.max_bits + 1):
            register(f"{cls.family}{bits}", lambda b=bits, c=cls: c(b))


if not ALIASES:  # once, even if this module is reloaded
    _register_builtins()

__all__ = ["WeightQuantizer", "LogQuantizer", "TernaryQuantizer", "BinaryQuantizer",
           "UL2QQuantizer", "DoReFaQuantizer", "FixedPointQuantizer", "MinMaxQuantizer",
           "get", "register", "aliases", "ALIASES"]
