"""Which activations a packed model stores as k-bit codes, and which max-pools it fuses.

``plan`` looks at an int8 flatbuffer (before ``converters.packing`` rewrites it) and
decides, once, for the whole graph:

- **Fused pools.** A CONV_2D / DEPTHWISE_CONV_2D whose only consumer is a MAX_POOL_2D
  (no fused activation, same quantization) writes the pool's output directly; the
  un-pooled tensor, the largest in a conv -> pool block, is never stored. Max is
  monotone, so the pooled codes are TFLM's exactly (``micro/kernels``).
- **Packed tensors.** A tensor that can only hold the 2^k codes 128 - 2^k .. 127
  (``packing.input_code_bits``: a low-bit activation, k <= 4), produced by a layer
  (possibly through its fused pool) and read only by layers (possibly through RESHAPE /
  SQUEEZE, which are dropped: the packed layout is the NHWC order, which they keep) is
  stored as k-bit codes: ``packed_format.pack_activations``' layout, 1/8 .. 1/2 of its
  int8 bytes in the arena.

Every layer that writes or reads a packed tensor becomes a TFLQ_PACKED op, int8 rows
if its weights are not low-bit (``forced``). Graph inputs and outputs stay int8, so the
firmware's I/O and the host reference's are the same tensors.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tflq.converters import flatbuffer as fb
from tflq.converters.packed_format import Layer, activation_bytes, same_padding

LAYER_NAMES = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")
_VIEWS = ("RESHAPE", "SQUEEZE")  # same values in the same order: no-ops on packed codes


@dataclasses.dataclass(frozen=True)
class PackedTensor:
    name: str
    bits: int
    int8_bytes: int
    packed_bytes: int


@dataclasses.dataclass(frozen=True)
class ActivationPlan:
    pools: dict  # layer op index -> (pool op index, (kh, kw, sh, sw, pad_t, pad_l, oh, ow))
    packed: dict  # tensor index -> PackedTensor
    views: dict  # RESHAPE / SQUEEZE op index -> the packed tensor it is dropped for
    forced: frozenset  # layer op indices that must be TFLQ_PACKED (they touch packed codes)


def _pool_geometry(model, op) -> tuple | None:
    """(kh, kw, sh, sw, pad_t, pad_l, oh, ow) of a MAX_POOL_2D that can be fused: no
    fused activation and the same quantization in and out."""
    o = op.builtinOptions
    if o is None or o.fusedActivationFunction != fb.schema.ActivationFunctionType.NONE:
        return None
    x, y = fb.tensor(model, op.inputs[0]), fb.tensor(model, op.outputs[0])
    sg = model.subgraphs[0]
    if (sg.tensors[op.outputs[0]].type != fb.schema.TensorType.INT8 or len(x.shape) != 4
            or not np.array_equal(x.scale, y.scale)
            or not np.array_equal(x.zero_point, y.zero_point)):
        return None
    _, h, w, _ = x.shape
    _, oh, ow, _ = y.shape
    kh, kw, sh, sw = o.filterHeight, o.filterWidth, o.strideH, o.strideW
    if o.padding == fb.schema.Padding.SAME:
        pad = (same_padding(h, oh, sh, kh), same_padding(w, ow, sw, kw))
    else:
        pad = (0, 0)
    geometry = (kh, kw, sh, sw, *pad, oh, ow)
    if min(geometry[:4]) < 1 or max(geometry[:6]) > 255 or pad[0] >= kh or pad[1] >= kw:
        return None
    return geometry


def plan(model, layers: dict, packed_ops: set, code_bits: dict,
         int8_pools: bool = False, pack_activations: bool = True) -> ActivationPlan:
    """The plan for ``model`` (schema object API, not modified). ``layers``: op index ->
    ``packing.Layer`` or why not (every FC / CONV_2D / DEPTHWISE_CONV_2D); ``packed_ops``:
    the op indices packed for their weights; ``code_bits``: ``packing.input_code_bits``.
    ``int8_pools``: also fuse pools into int8 layers (made TFLQ_PACKED int8 rows);
    ``pack_activations`` False: no packed tensors (to measure what they save)."""
    sg = model.subgraphs[0]
    names = [fb.op_name(model, op) for op in sg.operators]
    producer = {int(t): i for i, op in enumerate(sg.operators) for t in op.outputs}
    consumers: dict = {}
    for i, op in enumerate(sg.operators):
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(int(t), []).append(i)
    io = {int(t) for t in (*sg.inputs, *sg.outputs)}

    def fusable(i: int):
        out = int(sg.operators[i].outputs[0])
        users = consumers.get(out, [])
        if (names[i] == "FULLY_CONNECTED" or not isinstance(layers.get(i), Layer)
                or out in io or len(users) != 1 or names[users[0]] != "MAX_POOL_2D"):
            return None
        geometry = _pool_geometry(model, sg.operators[users[0]])
        return (users[0], geometry) if geometry else None

    def readers(t: int):
        """The layers reading tensor t through views, with the views; None if anything
        else reads it (or it leaves the graph)."""
        found, views = [], []
        for j in consumers.get(t, []):
            op = sg.operators[j]
            if names[j] in _VIEWS and int(op.inputs[0]) == t and int(op.outputs[0]) not in io:
                inner = readers(int(op.outputs[0]))
                if inner is None:
                    return None
                found += inner[0]
                views += [j, *inner[1]]
            elif (names[j] in LAYER_NAMES and int(op.inputs[0]) == t
                  and isinstance(layers.get(j), Layer)):
                found.append(j)
            else:
                return None
        return found, views

    pools, packed, views, forced = {}, {}, {}, set()
    for t, k in code_bits.items() if pack_activations else ():
        if t in io or t not in producer:
            continue
        p = producer[t]
        pool = None
        if names[p] == "MAX_POOL_2D":  # through a pool fused into its producer
            source = producer.get(int(sg.operators[p].inputs[0]))
            pool = fusable(source) if source is not None else None
            if pool is None or pool[0] != p:
                continue
            p = source
        elif names[p] not in LAYER_NAMES or not isinstance(layers.get(p), Layer):
            continue
        found = readers(t)
        values = int(np.prod(sg.tensors[t].shape))
        if not found or not found[0]:
            continue
        layer = layers[p]
        outputs = int(np.prod(pool[1][6:] if pool else layer.out_hw)) * layer.out_channels
        if outputs != values or any(int(np.prod(layers[j].in_hwc)) != values for j in found[0]):
            continue  # more than one batch: packed batches would not start on a byte
        if pool:
            pools[p] = pool
        packed[t] = PackedTensor(fb.tensor(model, t).name, k, values, activation_bytes(values, k))
        views.update({j: t for j in found[1]})
        forced |= {p, *found[0]}
    for i in sorted(set(packed_ops) | forced | (set(layers) if int8_pools else set())):
        if i not in pools and fusable(i):  # pools fused wherever the layer is TFLQ_PACKED
            pools[i] = fusable(i)
            if i not in packed_ops:
                forced.add(i)
    return ActivationPlan(pools, packed, views, frozenset(forced))


def apply(model, activation_plan: ActivationPlan, layers: dict) -> None:
    """Sets each planned layer's ``pool`` / ``in_packed`` / ``out_packed`` (``layers``
    op index -> Layer, in place) and rewrites ``model``: fused pools and dropped views
    are removed, their readers read the packed tensor, packed tensors take their packed
    byte size as shape [1, bytes]. Op indices in the plan are the model's before this."""
    sg = model.subgraphs[0]
    for i, (pool_index, geometry) in activation_plan.pools.items():
        layers[i].pool = geometry
        sg.operators[i].outputs = [int(sg.operators[pool_index].outputs[0])]
    for i, layer in layers.items():
        if isinstance(layer, Layer) and int(sg.operators[i].outputs[0]) in activation_plan.packed:
            layer.out_packed = activation_plan.packed[int(sg.operators[i].outputs[0])].bits
    for j, t in activation_plan.views.items():
        for reader in sg.operators:
            if reader.inputs is not None and len(reader.inputs) and \
                    reader.inputs[0] == sg.operators[j].outputs[0]:
                reader.inputs = [t, *reader.inputs[1:]]
    for i, layer in layers.items():
        if isinstance(layer, Layer) and int(sg.operators[i].inputs[0]) in activation_plan.packed:
            layer.in_packed = activation_plan.packed[int(sg.operators[i].inputs[0])].bits
    for t, info in activation_plan.packed.items():
        tensor = sg.tensors[t]
        tensor.shape, tensor.shapeSignature = [1, info.packed_bytes], None
    dropped = {p for p, _ in activation_plan.pools.values()} | set(activation_plan.views)
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in dropped]
