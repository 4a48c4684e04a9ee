"""Per-layer weight report of a QAT model: histograms before and after quantization
(PNG, one per layer, like the figures of Cai et al.'s HiFive1 paper) and a
Markdown page with the layer table (quantizer, bits, levels, weight bytes).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from tflq import outputs


@dataclasses.dataclass
class LayerWeights:
    name: str
    quantizer: str        # "int8" or the low-bit alias
    bits: int
    levels: int           # distinct quantized values (most in any output channel)
    count: int            # number of weights
    float_weights: np.ndarray
    quantized: np.ndarray

    @property
    def packed_bytes(self) -> int:
        return (self.count * self.bits + 7) // 8


def layer_weights(qat_model) -> list[LayerWeights]:
    """Float and quantized kernels of each quantized Conv2D / DepthwiseConv2D / Dense."""
    from tflq.qat import LowBitWeightQuantizer, quantized_kernels

    found = []
    for wrapper, weight, quantizer, variables in quantized_kernels(qat_model):
        w = weight.numpy()
        q = np.asarray(quantizer(weight, False, variables))
        if isinstance(quantizer, LowBitWeightQuantizer):
            alias, bits = quantizer.weight_quantizer.alias, quantizer.weight_quantizer.bits
        else:
            alias, bits = "int8", 8
        channels = q.reshape(-1, q.shape[-1]).T
        levels = max(len(np.unique(c)) for c in channels)
        found.append(LayerWeights(wrapper.layer.name, alias, bits, levels, w.size, w, q))
    return found


def write(qat_model, output_dir: str, overwrite: bool = False) -> list[LayerWeights]:
    """Writes ``<layer>.png`` per layer and ``report.md`` into ``output_dir`` (atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = layer_weights(qat_model)
    with outputs.atomic_dir(output_dir, overwrite) as tmp:
        rows = ["| layer | quantizer | bits | levels | weights | bytes at b bits | bytes as int8 |",
                "|---|---|---|---|---|---|---|"]
        for l in layers:
            fig, (before, after) = plt.subplots(1, 2, figsize=(8, 3), dpi=100, sharex=True)
            before.hist(l.float_weights.ravel(), bins=100, color="tab:blue")
            before.set_title(f"{l.name}: float")
            values, counts = np.unique(l.quantized.ravel(), return_counts=True)
            if len(values) <= 64:  # a few levels (shared by the channels): one bar each
                span = np.ptp(l.float_weights) or 1.0
                after.bar(values, counts, width=span / 100, color="tab:orange")
            else:  # per-channel scales: too many distinct values for bars
                after.hist(l.quantized.ravel(), bins=100, color="tab:orange")
            after.set_title(f"{l.name}: {l.quantizer} ({l.levels} levels)")
            for ax in (before, after):
                ax.set_xlabel("weight")
            before.set_ylabel("count")
            fig.tight_layout()
            fig.savefig(os.path.join(tmp, f"{l.name}.png"))
            plt.close(fig)
            rows.append(f"| {l.name} | {l.quantizer} | {l.bits} | {l.levels} | {l.count:,} | "
                        f"{l.packed_bytes:,} | {l.count:,} |")
        total = sum(l.packed_bytes for l in layers)
        body = "\n".join(rows) + f"\n\nTotal weight bytes at b bits: {total:,} " \
                                 f"(int8: {sum(l.count for l in layers):,}).\n\n"
        body += "\n".join(f"![{l.name}]({l.name}.png)" for l in layers) + "\n"
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(f"# Weights of {qat_model.name}\n\n{body}")
    return layers
