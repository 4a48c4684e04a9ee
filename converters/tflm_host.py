"""Runs a flatbuffer on TFLM's host interpreter (the ``tflite-micro`` wheel).

This is the same kernel code the firmware runs, compiled for the host, so it
is the bit-exact reference for the device. Its arena figures are 64-bit sizes
and overstate a 32-bit MCU: never quote them as device numbers.
"""
from __future__ import annotations

import numpy as np

from tflite_micro.python.tflite_micro import runtime


def predict(flatbuffer: bytes, inputs_int8: np.ndarray) -> np.ndarray:
    """int8 outputs for a batch of int8 inputs, one Invoke per input."""
    interpreter = runtime.Interpreter.from_bytes(flatbuffer)
    outputs = []
    for x in np.asarray(inputs_int8, np.int8):
        interpreter.set_input(x[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0))[0])
    return np.stack(outputs)
