"""INQ: Incremental Network Quantization (Zhou, Yao, Guo, Xu, Chen; ICLR 2017).

Weights are moved to powers of two a share at a time: at each step the largest
remaining weights (by magnitude, per layer) are quantized and frozen, and the rest
retrain to make up for them. With the default schedule 50%, 75%, 87.5%, 100%,
the model ends with every low-bit weight on its power-of-two level.

    qat = tflq.quantize_model(model, scheme="inq4", calibration_data=x[:1000])
    qat.compile(...)
    qat.fit(x, y, epochs=4, callbacks=[tflq.inq.INQ()])    # one epoch per step

The frozen values are kept in their own variables, so optimizer momentum on a
frozen weight cannot move it off its level.
"""
from __future__ import annotations

import numpy as np
import tf_keras as keras

from tflq.errors import TflqError


class INQ(keras.callbacks.Callback):
    """Freezes ``schedule[k]`` of each INQ layer's weights at epoch ``k * epochs_per_step``."""

    def __init__(self, schedule=(0.5, 0.75, 0.875, 1.0), epochs_per_step: int = 1):
        super().__init__()
        if not schedule or any(b <= a for a, b in zip(schedule, schedule[1:])) \
                or not 0 < schedule[0] or schedule[-1] != 1.0:
            raise TflqError(f"INQ schedule {tuple(schedule)}: give increasing shares ending at 1.0")
        self.schedule = tuple(schedule)
        self.epochs_per_step = epochs_per_step

    def on_train_begin(self, logs=None):
        if not incremental_layers(self.model):
            raise TflqError("INQ callback on a model without INQ layers: quantize it with "
                            "scheme='inq3'/'inq4' or Scheme(..., incremental=True)")

    def on_epoch_begin(self, epoch, logs=None):
        share = self.schedule[min(epoch // self.epochs_per_step, len(self.schedule) - 1)]
        freeze(self.model, share)

    def on_train_end(self, logs=None):
        # Whatever the epoch count, training ends with every weight on its level,
        # so the model converts exactly (the last INQ step freezes all anyway).
        freeze(self.model, 1.0)


def incremental_layers(qat_model):
    """[(wrapper, LowBitWeightQuantizer, kernel, variables)] for INQ layers;
    ``variables["mask"]`` marks the frozen weights, ``variables["frozen"]`` their values."""
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels

    return [(wrapper, quantizer, kernel, variables)
            for wrapper, kernel, quantizer, variables in quantized_kernels(qat_model)
            if isinstance(quantizer, LowBitWeightQuantizer) and quantizer.incremental]


def freeze(qat_model, share: float) -> None:
    """Quantizes and freezes the largest ``share`` of each INQ layer's weights
    (weights frozen before stay frozen, with their values)."""
    for _, quantizer, kernel, variables in incremental_layers(qat_model):
        mask, frozen = variables["mask"], variables["frozen"]
        w, old = kernel.numpy(), mask.numpy()
        current = np.where(old > 0, frozen.numpy(), w)
        count = int(round(share * w.size))
        order = np.argsort(-np.abs(current), axis=None, kind="stable")
        new = np.zeros(w.size, np.float32)
        new[order[:count]] = 1.0
        new = np.maximum(new.reshape(w.shape), old)
        levels = quantizer.levels(current).numpy()
        frozen.assign(np.where(old > 0, frozen.numpy(), np.where(new > 0, levels, 0.0)))
        mask.assign(new)
        quantizer.sync(kernel, variables)
