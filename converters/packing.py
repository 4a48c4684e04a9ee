"""Rewriting a flatbuffer's low-bit layers into packed ``TFLQ_PACKED`` ops.

``pack_model`` rewrites a flatbuffer's eligible FULLY_CONNECTED / CONV_2D /
DEPTHWISE_CONV_2D operators into the custom operator ``TFLQ_PACKED`` (inputs:
activation, blob; output: activation) through the schema's object API, dropping the
int8 weight and bias tensors; the blob is ``converters.packed_format``'s TQP1.
Ineligible layers stay builtin int8 and the result (``PackedOp``) says why.

Requantization is precomputed here exactly as TFLM computes it at Prepare
(``requant_params``), so the firmware keeps no per-channel tables in RAM.
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

from tflq.converters import activation_plan, layer_cost
from tflq.converters import flatbuffer as fb
# The format's names, as the callers know them (packing.pack, packing.Layer, ...).
from tflq.converters.packed_format import (  # noqa: F401
    CUSTOM_CODE, FLAG_IN_RAM, FLAGS_OFFSET, FMT_BITSERIAL, FMT_INT8, FMT_LUT, FMT_PLANES,
    FORMAT_NAMES, HEADER, MAX_BITS,
    OP_CONV, OP_DEPTHWISE, OP_FC, OP_NAMES, Encoding, Layer, bias_eff, bit_serial,
    STAGE_UNIT, same_padding as _same_padding,
    choose_encoding, estimated_per_mac, input_low, pack, reference, scratch_bytes, stage_bytes,
    thresholds, unpack)
from tflq.converters.requantize import quantize_multiplier
from tflq.errors import TflqError


def requant_params(op_name: str, in_scale, filter_scales, out_scale, channels: int):
    """(multiplier, shift) int32 arrays, as TFLM's Prepare computes them (float32 inputs)."""
    s_in, s_out = np.float32(in_scale), np.float32(out_scale)
    scales = np.asarray(filter_scales, np.float32)
    if op_name == "FULLY_CONNECTED" and scales.size == 1:
        # GetQuantizedConvolutionMultipler: the scale product in float, then double.
        reals = [float(np.float32(s_in * scales[0])) / float(s_out)] * channels
    else:
        # PopulateConvolutionQuantizationParams and per-channel FC: in double.
        if scales.size == 1:
            scales = np.repeat(scales, channels)
        reals = [float(s_in) * float(s) / float(s_out) for s in scales]
    pairs = [quantize_multiplier(r) for r in reals]
    return (np.array([p[0] for p in pairs], np.int32), np.array([p[1] for p in pairs], np.int32))


def _activation_range(act: int, scale: float, zero_point: int) -> tuple[int, int]:
    """TFLM's CalculateActivationRangeQuantized for int8."""
    q = lambda f: zero_point + int(np.round(np.float32(f) / np.float32(scale)))  # noqa: E731
    A = fb.schema.ActivationFunctionType
    if act == A.NONE:
        return -128, 127
    if act == A.RELU:
        return max(-128, q(0.0)), 127
    if act == A.RELU6:
        return max(-128, q(0.0)), min(127, q(6.0))
    if act == A.RELU_N1_TO_1:
        return max(-128, q(-1.0)), min(127, q(1.0))
    raise TflqError(f"fused activation {act} cannot be packed")


def layer_of_op(model, op) -> Layer | str:
    """The Layer of an int8 FC / CONV_2D / DEPTHWISE_CONV_2D operator, or why not."""
    name = fb.op_name(model, op)
    sg = model.subgraphs[0]
    if len(op.inputs) < 2 or op.inputs[1] < 0:
        return "no weights"
    x, w, y = (fb.tensor(model, i) for i in (op.inputs[0], op.inputs[1], op.outputs[0]))
    types = [sg.tensors[i].type for i in (op.inputs[0], op.inputs[1], op.outputs[0])]
    if any(t != fb.schema.TensorType.INT8 for t in types):
        return "not int8 activations and weights"
    if w.data is None:
        return "weights are not a constant tensor"
    if not (x.scale.size and w.scale.size and y.scale.size):
        return "an input, weight or output tensor has no quantization scale"
    if w.zero_point.size and np.any(w.zero_point != 0):
        return "weights have a non-zero zero point"
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    b = fb.tensor(model, op.inputs[2]) if has_bias else None
    if has_bias and (b.data is None or sg.tensors[op.inputs[2]].type != fb.schema.TensorType.INT32):
        return "bias is not a constant int32 tensor"
    opts = op.builtinOptions
    in_zp = int(x.zero_point[0]) if x.zero_point.size else 0
    out_zp = int(y.zero_point[0]) if y.zero_point.size else 0
    act_min, act_max = _activation_range(opts.fusedActivationFunction, float(y.scale[0]), out_zp)
    if name == "FULLY_CONNECTED":
        channels, depth = w.shape
        weights = w.data.reshape(channels, depth)
        if int(np.prod(x.shape)) % depth:
            return f"input of {int(np.prod(x.shape))} values is not a multiple of depth {depth}"
        geometry = dict(in_hwc=(1, 1, depth), out_hw=(1, 1))
        op_code = OP_FC
    else:
        _, ih, iw, ic = x.shape
        _, oh, ow, _ = y.shape
        same = opts.padding == fb.schema.Padding.SAME
        stride, dil = (opts.strideH, opts.strideW), (opts.dilationHFactor, opts.dilationWFactor)
        if name == "CONV_2D":
            channels, kh, kw, fc = w.shape
            if fc != ic:
                return f"grouped convolution ({ic} input channels, filter depth {fc})"
            weights = w.data.reshape(channels, -1)
            op_code, mult = OP_CONV, 1
        else:
            _, kh, kw, channels = w.shape
            if kh * kw > 64:
                return f"{kh}x{kw} depthwise kernel (at most 64 taps)"
            weights = w.data.reshape(kh * kw, channels).T
            op_code, mult = OP_DEPTHWISE, channels // ic
        pad = ((_same_padding(ih, oh, stride[0], kh, dil[0]),
                _same_padding(iw, ow, stride[1], kw, dil[1])) if same else (0, 0))
        if max(kh, kw, *stride, *dil, *pad) > 255:
            return "kernel, stride, dilation or padding above 255"
        geometry = dict(in_hwc=(ih, iw, ic), out_hw=(oh, ow), kernel=(kh, kw), stride=stride,
                        dilation=dil, pad=pad, depth_multiplier=mult)
    mult_, shift = requant_params(name, x.scale[0], w.scale, y.scale[0], channels)
    bias = b.data.astype(np.int32) if has_bias else np.zeros(channels, np.int32)
    return Layer(op_code, np.ascontiguousarray(weights, np.int8), bias, mult_, shift, -in_zp,
                 out_zp, act_min, act_max, **geometry)


@dataclasses.dataclass(frozen=True)
class PackedOp:
    index: int  # operator index in the original model
    op: str
    output: str  # output tensor name: names the layer
    encoding: str | None  # e.g. "2-bit bit-planes"; None: stays int8
    reason: str  # why it stays int8 ("" when packed)
    int8_bytes: int  # weights + bias in the int8 model
    packed_bytes: int  # the blob (0 when not packed)
    per_mac: float = 0.0  # the kernel's estimated instructions per MAC (packed_format._PER_MAC)
    pool: str = ""  # the fused MAX_POOL_2D's output tensor ("": none)
    in_bits: int = 0  # reads k-bit packed codes (0: int8)
    out_bits: int = 0  # writes k-bit packed codes (0: int8)
    out_bytes: tuple = ()  # (int8, packed) arena bytes of a packed output
    in_ram: bool = False  # the blob is copied into the arena at Prepare (stage_in_ram)
    stage_channels: int = 0  # its rows are copied into scratch this many channels at a
    # time at every Eval (stage_per_eval); 0: read in place
    flash_reads: int = 0  # times an inference reads the weights when they stay in flash
    # The layer's shape as its kernel sees it: output positions, output channels, inputs
    # per output (all 0: a layer tflq cannot read).
    positions: int = 0
    out_channels: int = 0
    depth: int = 0
    tables: int = 0  # FMT_PLANES / FMT_LUT: its kernel builds tables that channels share
    instead_of: str = ""  # int8 rows chosen over this slower low-bit encoding (int8_rows)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per inference."""
        return self.positions * self.out_channels * self.depth

    @property
    def estimate(self) -> layer_cost.Estimate:
        """What the layer costs an inference where it was placed (``layer_cost``)."""
        return layer_cost.of_layer(self)


def packing_lines(packed_ops) -> list[str]:
    """One line per FC / CONV_2D / DEPTHWISE_CONV_2D: packed how (weights, fused pool,
    packed activations), or why it stays int8."""
    lines = []
    for p in packed_ops:
        if not p.encoding:
            lines.append(f"{p.op} {p.output!r}: stays int8 ({p.reason})")
            continue
        line = (f"{p.op} {p.output!r}: packed as {p.encoding}, {p.int8_bytes} -> "
                f"{p.packed_bytes} bytes, ~{p.per_mac:.2f} instructions/MAC")
        if p.pool:
            line += f"; max-pool {p.pool!r} fused"
        if p.in_bits:
            line += f"; reads {p.in_bits}-bit codes"
        if p.out_bits:
            line += (f"; writes {p.out_bits}-bit codes ({p.out_bytes[0]} -> {p.out_bytes[1]} "
                     "arena bytes)")
        if p.in_ram:
            line += (f"; weights in RAM ({p.packed_bytes} B copied from flash once, at "
                     f"AllocateTensors; in flash an inference would read them "
                     f"{p.flash_reads} time{'s' if p.flash_reads > 1 else ''})")
        if p.stage_channels:
            line += (f"; weights staged in RAM at every inference, {p.stage_channels} "
                     f"channels at a time (read from flash once per inference, not "
                     f"{p.flash_reads} times)")
        lines.append(f"{line}; {p.estimate.describe()}")
    return lines


_SHORT_OPS = {"FULLY_CONNECTED": "FC", "CONV_2D": "CONV", "DEPTHWISE_CONV_2D": "DW"}


def kernel_summary(packed_ops) -> str:
    """Each FC / conv layer's kernel in a few words, in model order (the demo's table)."""
    parts = []
    for p in packed_ops:
        kernel = ("int8" if not p.encoding else f"int8 rows, not {p.instead_of}"
                  if p.instead_of else p.encoding.split(" (")[0])
        parts.append(f"{_SHORT_OPS[p.op]} {kernel}")
    return "; ".join(parts)


_SAME_CODES = ("MAX_POOL_2D", "RESHAPE", "SQUEEZE", "PAD", "AVERAGE_POOL_2D")


def input_code_bits(model) -> dict:
    """``{tensor index: k}`` for the int8 tensors that can only hold the 2^k codes
    128 - 2^k .. 127 (k <= 4): outputs of FC / CONV_2D / DEPTHWISE_CONV_2D whose
    activation range is exactly that (a low-bit activation,
    ``tflq.quantizers.activations``), and what pooling, padding and reshapes make of
    them with the same quantization."""
    sg = model.subgraphs[0]
    found = {}
    for op in sg.operators:
        name = fb.op_name(model, op)
        if op.outputs is None or len(op.outputs) != 1 or op.inputs is None or not len(op.inputs):
            continue
        y = fb.tensor(model, op.outputs[0])
        if name in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D"):
            if sg.tensors[op.outputs[0]].type != fb.schema.TensorType.INT8 or not y.scale.size:
                continue
            zp = int(y.zero_point[0]) if y.zero_point.size else 0
            act = getattr(op.builtinOptions, "fusedActivationFunction", None)
            try:
                low, high = _activation_range(act, float(y.scale[0]), zp)
            except (TflqError, ValueError, OverflowError):  # TANH, SIGN_BIT, no options,
                continue                                       # or a scale of 0 / inf
            span = high - low + 1
            if high == 127 and span & (span - 1) == 0 and 2 <= span <= 1 << MAX_BITS:
                found[int(op.outputs[0])] = span.bit_length() - 1
        elif name in _SAME_CODES and op.inputs[0] in found:
            x = fb.tensor(model, op.inputs[0])
            same = (np.array_equal(x.scale, y.scale) and np.array_equal(x.zero_point, y.zero_point))
            zp = int(x.zero_point[0]) if x.zero_point.size else 0
            if same and input_low(found[op.inputs[0]]) <= zp <= 127:
                found[int(op.outputs[0])] = found[op.inputs[0]]
    return found


# The encoding of an int8 CONV_2D that int8_convs made TFLQ_PACKED (so that its rows
# can be copied into RAM).
INT8_ROWS_STAGED = "int8 rows (to be copied into RAM)"
# An int8 FULLY_CONNECTED that int8_fcs made TFLQ_PACKED: its blob's channel groups
# (packed_format._int8_groups) are read from flash in one sequential stream.
INT8_ROWS_SEQUENTIAL = "int8 rows (channel groups, read in sequence)"


def pack_model(flatbuffer: bytes, int8_pools: bool = False,
               pack_activations: bool = True,
               int8_convs: bool = False, int8_fcs: bool = False,
               int8_rows=frozenset()) -> tuple[bytes, list[PackedOp]]:
    """Rewrites eligible operators to TFLQ_PACKED; returns (flatbuffer, one PackedOp each).

    Then ``converters.activation_plan`` decides which max-pools are fused into the
    packed layers and which low-bit activations are stored as k-bit codes; layers that
    read or write those become TFLQ_PACKED too, with int8 rows where their weights are
    not low-bit. ``int8_pools``: fuse max-pools into int8 layers too (int8 rows);
    ``pack_activations`` False: every activation stays int8. ``int8_convs``: every
    int8 CONV_2D with more than one output position becomes int8 rows too, so that
    ``stage_in_ram`` can copy its rows into RAM: it reads them once per output position,
    each read a flash read on the FE310 while they stay in the model. ``int8_fcs``:
    every int8 FULLY_CONNECTED becomes int8 rows too, whose channel groups tflq's
    kernel reads in sequence: the FE310's flash serves a sequential byte in 64 cycles
    and an isolated load in about 500 (``converters.flash_reads``), and TFLite's row
    layout makes the group loop jump between rows. ``int8_rows``: indices of operators
    packed as int8 rows although their weights are low-bit (``slower_than_int8_rows``:
    the generator's choice, by ``layer_cost``, of the faster kernel).

    An operator is eligible when it is an int8 FC / CONV_2D / DEPTHWISE_CONV_2D whose
    weights take <= 4 bits (``choose_encoding``) and whose blob is smaller than its int8
    weights and bias (not so for tiny layers, where the 68-byte header and 12 bytes of
    requantization per channel dominate). Other layers stay builtin int8, as do all
    other operators. An FC / CONV_2D with bit-plane weights whose input holds low-bit
    codes (``input_code_bits``) gets the bit-serial kernel (AND and popcount, 32 inputs
    per word) where its measured instructions per MAC (``estimated_per_mac``) beat the
    bit-plane kernel's: up to 4 popcounts per word pair (W1A1 .. W2A2, W4A1), not W4A4.
    """
    model = fb.load(bytes(flatbuffer))
    if len(model.subgraphs) != 1:
        raise TflqError(f"model has {len(model.subgraphs)} subgraphs: packing handles one")
    sg = model.subgraphs[0]
    code_bits = input_code_bits(model)
    ops = list(sg.operators)  # indices as in the input model (the plan drops some)
    layers, encodings, kept, int8_bytes, out_names = {}, {}, {}, {}, {}
    for index, op in enumerate(ops):
        name = fb.op_name(model, op)
        if name not in activation_plan.LAYER_NAMES:
            continue
        out_names[index] = fb.tensor(model, op.outputs[0]).name
        const_inputs = [i for i in op.inputs[1:3] if i >= 0]
        int8_bytes[index] = sum(len(model.buffers[sg.tensors[i].buffer].data)
                                for i in const_inputs
                                if model.buffers[sg.tensors[i].buffer].data is not None)
        layer = layers[index] = layer_of_op(model, op)
        enc = choose_encoding(layer.weights) if isinstance(layer, Layer) else layer
        if isinstance(enc, str):
            kept[index] = enc
            continue
        if (enc.format == FMT_PLANES and layer.op != OP_DEPTHWISE
                and op.inputs[0] in code_bits and -layer.input_offset == input_low(
                    code_bits[op.inputs[0]])):
            serial = bit_serial(enc, code_bits[op.inputs[0]], layer)
            if estimated_per_mac(serial) < estimated_per_mac(enc):
                enc = serial
        size = len(pack(layer, enc))
        if size >= int8_bytes[index]:  # tiny layers: header and per-channel records dominate
            kept[index] = (f"packed ({enc.describe()}, {size} B) would not be smaller than "
                           f"int8 weights + bias ({int8_bytes[index]} B)")
            continue
        encodings[index] = enc
    plan = activation_plan.plan(model, layers, set(encodings), code_bits, int8_pools,
                                pack_activations)
    pool_names = {i: fb.tensor(model, ops[p].outputs[0]).name for i, (p, _) in plan.pools.items()}
    activation_plan.apply(model, plan, layers)
    convs = {i for i, layer in layers.items() if int8_convs and isinstance(layer, Layer)
             and layer.op == OP_CONV and layer.out_hw[0] * layer.out_hw[1] > 1}
    fcs = {i for i, layer in layers.items() if int8_fcs and isinstance(layer, Layer)
           and layer.op == OP_FC}
    slower = {i: encodings.pop(i) for i in sorted(int8_rows) if i in encodings}
    forced = plan.forced | convs | fcs | set(slower)
    report, custom_index = [], None
    for index in sorted(layers):
        name = fb.op_name(model, ops[index])
        if index not in encodings and index not in forced:
            reason, layer = kept[index], layers[index]
            report.append(PackedOp(index, name, out_names[index], None, reason,
                                   int8_bytes[index], 0,
                                   **(_shape(layer) if isinstance(layer, Layer) else {})))
            continue
        layer, enc, op = layers[index], encodings.get(index), ops[index]
        blob = pack(layer, enc)
        if custom_index is None:
            code = fb.schema.OperatorCodeT()
            code.builtinCode = code.deprecatedBuiltinCode = fb.schema.BuiltinOperator.CUSTOM
            code.customCode, code.version = CUSTOM_CODE.encode(), 1
            model.operatorCodes.append(code)
            custom_index = len(model.operatorCodes) - 1
        buffer = fb.schema.BufferT()
        buffer.data = np.frombuffer(blob, np.uint8).copy()
        model.buffers.append(buffer)
        tensor = fb.schema.TensorT()
        tensor.name = f"{out_names[index]}/tflq_packed".encode()
        tensor.type, tensor.shape = fb.schema.TensorType.UINT8, [len(blob)]
        tensor.buffer = len(model.buffers) - 1
        sg.tensors.append(tensor)
        op.opcodeIndex = custom_index
        op.inputs = [op.inputs[0], len(sg.tensors) - 1]
        op.builtinOptionsType, op.builtinOptions = 0, None
        op.customOptions = None
        out = plan.packed.get(int(op.outputs[0]))
        report.append(PackedOp(
            index, name, out_names[index],
            enc.describe() if enc else "int8 rows" + (
                " (its activations are packed)" if layer.in_packed or layer.out_packed
                else " (a max-pool is fused)" if index in plan.forced
                else int8_rows_label(slower[index], OP_NAMES[layer.op], layer.out_channels)
                if index in slower
                else INT8_ROWS_STAGED[len("int8 rows"):] if index in convs
                else INT8_ROWS_SEQUENTIAL[len("int8 rows"):]), "",
            int8_bytes[index], len(blob),
            estimated_per_mac(enc) if enc else layer_cost.int8_per_mac(OP_NAMES[layer.op],
                                                                      layer.out_channels),
            pool_names.get(index, ""),
            layer.in_packed, layer.out_packed, (out.int8_bytes, out.packed_bytes) if out else (),
            **_shape(layer), tables=shares_tables(layer, enc),
            instead_of=slower[index].describe() if index in slower else ""))
    fb.drop_unused(model)
    return fb.dump(model), report


def int8_rows_label(slower: Encoding, op: str, out_channels: int) -> str:
    """The encoding (after "int8 rows") of a layer (TFLite operator ``op``) packed as
    int8 rows because they are faster than its low-bit weights' kernel."""
    return (f" (faster than its {slower.describe()}: "
            f"~{layer_cost.int8_per_mac(op, out_channels):.2f} vs "
            f"~{estimated_per_mac(slower):.2f} instructions/MAC)")


def slower_than_int8_rows(packed_ops) -> list[int]:
    """Indices of the packed FC / CONV_2D layers whose kernel takes more instructions
    per MAC than int8 rows would (``layer_cost.per_mac``: codebooks, bit-planes of 2 bits
    and more, and tables shared by few channels), those doing the most MACs first:
    ``pack_model``'s int8_rows candidates."""
    def saved(p):  # instructions per inference int8 rows would save
        return p.macs * (layer_cost.per_mac(p) - layer_cost.int8_per_mac(p.op, p.out_channels))
    slower = [p for p in packed_ops if p.encoding and not p.encoding.startswith("int8 rows")
              and p.op != "DEPTHWISE_CONV_2D" and saved(p) > 0]
    return [p.index for p in sorted(slower, key=lambda p: (-saved(p), p.index))]


def shares_tables(layer: Layer, enc: Encoding | None) -> int:
    """The format (FMT_PLANES / FMT_LUT) whose tables ``layer``'s kernel builds per block
    of inputs and its channels share (layer_eval.c: uses_shared_tables), else 0."""
    if enc is None or layer.op == OP_DEPTHWISE or enc.format not in (FMT_PLANES, FMT_LUT):
        return 0
    return 0 if enc.format == FMT_LUT and enc.per_channel else enc.format


def _shape(layer: Layer) -> dict:
    """A PackedOp's shape fields and reads of ``layer``."""
    return dict(flash_reads=_reads_per_inference(layer),
                positions=int(layer.out_hw[0]) * int(layer.out_hw[1]),
                out_channels=layer.out_channels, depth=layer.depth)


# TFLM rounds persistent buffers up to this alignment (MicroArenaBufferAlignment).
PERSISTENT_ALIGN = 16


def staged_bytes(blob_bytes: int) -> int:
    """Arena bytes a blob's copy in RAM takes."""
    return -(-blob_bytes // PERSISTENT_ALIGN) * PERSISTENT_ALIGN


def _packed_blobs(model):
    """(operator, blob tensor, its buffer) of each TFLQ_PACKED operator, in operator
    order."""
    sg = model.subgraphs[0]
    for op in sg.operators:
        if fb.op_name(model, op) == CUSTOM_CODE:
            tensor = sg.tensors[op.inputs[1]]
            yield op, tensor, model.buffers[tensor.buffer]


def _reads_per_inference(layer: Layer) -> int:
    """Times an inference reads a layer's rows in place: a CONV_2D once per output
    position, FC and DEPTHWISE_CONV_2D once."""
    return int(layer.out_hw[0]) * int(layer.out_hw[1]) if layer.op == OP_CONV else 1


def _staging_candidates(model, packed_ops):
    """``packed_ops`` as a list, and (reads, blob bytes, op index, buffer) for each blob
    this packing made (not a TFLQ_PACKED op the input model had); pack_model recorded
    each layer's reads (``PackedOp.flash_reads``)."""
    ops = list(packed_ops)
    return ops, [(ops[index].flash_reads, len(buffer.data), index, buffer)
                 for _, index, buffer in _packed_operators(model, packed_ops)]


def _set_flag(buffer, flag: int) -> None:
    data = np.array(buffer.data, np.uint8)
    data[FLAGS_OFFSET] |= flag
    buffer.data = data


def stage_in_ram(flatbuffer: bytes, packed_ops, ram_left: int) -> tuple[bytes, list[PackedOp]]:
    """Marks packed blobs TFLQ_FLAG_IN_RAM while their copies fit ``ram_left`` bytes.

    On the FE310 every byte loaded from SPI flash costs about 64 core cycles (500 for an
    isolated load) against 2 from RAM (converters/flash_reads.py), and a CONV_2D reads
    its rows once per output position. So the layers whose rows an inference reads most
    often go first (CONV_2D: out_h x out_w times; FC and DEPTHWISE_CONV_2D once), larger
    blobs first among equals. A blob copied into RAM is no longer staged at every Eval
    (``stage_per_eval``: its custom options are cleared). Returns the flatbuffer and
    ``packed_ops`` with ``in_ram`` filled in."""
    model = fb.load(bytes(flatbuffer))
    ops, candidates = _staging_candidates(model, packed_ops)
    for reads, size, index, buffer in sorted(candidates, key=lambda c: (-c[0], -c[1], c[2])):
        if not ops[index].in_ram and staged_bytes(size) <= ram_left:
            ram_left -= staged_bytes(size)
            _set_flag(buffer, FLAG_IN_RAM)
            ops[index] = dataclasses.replace(ops[index], in_ram=True, stage_channels=0)
    for op, index, _ in _packed_operators(model, ops):
        if ops[index].in_ram:
            op.customOptions = None
    return fb.dump(model), ops


def _packed_operators(model, packed_ops):
    """(operator, index into ``packed_ops``, its blob's buffer) for each TFLQ_PACKED
    operator this packing made."""
    by_name = {p.output + "/tflq_packed": i for i, p in enumerate(packed_ops) if p.encoding}
    for op, tensor, buffer in _packed_blobs(model):
        index = by_name.get(_name(tensor))
        if index is not None:
            yield op, index, buffer


def _name(tensor) -> str:
    return tensor.name.decode(errors="replace") if tensor.name else ""


def per_eval_candidates(flatbuffer: bytes, packed_ops) -> list[int]:
    """Indices into ``packed_ops`` of the blobs worth staging at every Eval
    (``stage_per_eval``): read more than once per inference (CONV_2D), not in RAM
    already; the most flash bytes saved first."""
    ops, candidates = _staging_candidates(fb.load(bytes(flatbuffer)), packed_ops)
    return [index for reads, size, index, _ in
            sorted(candidates, key=lambda c: (-(c[0] - 1) * c[1], c[2]))
            if reads > 1 and not ops[index].in_ram]


def stage_per_eval(flatbuffer: bytes, packed_ops, channels: dict) -> tuple[bytes, list[PackedOp]]:
    """Gives the TFLQ_PACKED CONV_2D of ``packed_ops[i]`` the custom options
    stage_channels = ``channels[i]`` (a little-endian u16; capped at its output
    channels): at every Eval its kernel copies that many channels' rows and constants
    at a time into its scratch and runs them over every output position, so an
    inference reads the blob from flash once, in sequence, instead of once per output
    position. Scratch is shared between ops (TFLM plans it by lifetime), so this fits
    where lasting copies (``stage_in_ram``) do not. Returns the flatbuffer and
    ``packed_ops`` with ``stage_channels`` and ``flash_reads`` filled in."""
    model = fb.load(bytes(flatbuffer))
    ops, _ = _staging_candidates(model, packed_ops)
    for op, index, buffer in _packed_operators(model, ops):
        if index not in channels:
            continue
        layer, _ = unpack(bytes(bytearray(buffer.data)))
        n = min(int(channels[index]), layer.out_channels)
        if (layer.op != OP_CONV or ops[index].in_ram
                or not (n == layer.out_channels or n % STAGE_UNIT == 0)):
            raise TflqError(f"{ops[index].output!r}: cannot stage {n} channels at a time "
                            f"(CONV_2D with weights in flash only; a multiple of {STAGE_UNIT}, "
                            "or all)")
        op.customOptions = np.frombuffer(struct.pack("<H", n), np.uint8).copy()
        ops[index] = dataclasses.replace(ops[index], stage_channels=n)
    return fb.dump(model), ops


def rereads_from_flash(flatbuffer: bytes) -> list[str]:
    """The layers (``PackedOp.output``) whose TFLQ_PACKED blobs an inference reads from
    flash more than once: CONV_2D neither in RAM (TFLQ_FLAG_IN_RAM) nor staged per Eval."""
    names = []
    for op, tensor, buffer in _packed_blobs(fb.load(bytes(flatbuffer))):
        blob = bytes(bytearray(buffer.data))
        if (_reads_per_inference(unpack(blob)[0]) > 1 and not blob[FLAGS_OFFSET] & FLAG_IN_RAM
                and not stage_channels_of(op)):
            names.append(_name(tensor).removesuffix("/tflq_packed"))
    return names


def stage_channels_of(op) -> int:
    """A TFLQ_PACKED operator's stage_channels custom option (0: none)."""
    options = bytes(bytearray(op.customOptions)) if op.customOptions is not None else b""
    return struct.unpack("<H", options)[0] if len(options) == 2 else 0


def model_staged_bytes(flatbuffer: bytes) -> int:
    """Arena bytes of the blobs a packed model copies into RAM (TFLQ_FLAG_IN_RAM)."""
    return sum(staged_bytes(len(b.data)) for _, _, b in _packed_blobs(fb.load(bytes(flatbuffer)))
               if b.data[FLAGS_OFFSET] & FLAG_IN_RAM)


def model_scratch_bytes(flatbuffer: bytes) -> int:
    """Sum of scratch RAM over a packed model's TFLQ_PACKED operators (staged blocks of
    rows included, ``stage_per_eval``)."""
    total = 0
    for op, _, buffer in _packed_blobs(fb.load(bytes(flatbuffer))):
        layer, enc = unpack(bytes(bytearray(buffer.data)))
        stage = stage_channels_of(op)
        total += scratch_bytes(layer, enc) + (stage_bytes(layer, enc, stage) if stage else 0)
    return total


def with_weight_levels(flatbuffer: bytes, levels, seed: int = 0) -> bytes:
    """The same int8 model with every FC / CONV_2D / DEPTHWISE_CONV_2D weight drawn at
    random from ``levels`` (int8 values): a low-bit model without training, for tests
    and benchmarks (instruction counts and bit-exactness do not depend on training)."""
    rng = np.random.default_rng(seed)
    model = fb.load(bytes(flatbuffer))
    sg = model.subgraphs[0]
    for op in sg.operators:
        if fb.op_name(model, op) in OP_NAMES.values():
            buffer = model.buffers[sg.tensors[op.inputs[1]].buffer]
            buffer.data = rng.choice(np.asarray(levels, np.int8), len(buffer.data)).view(np.uint8)
    return fb.dump(model)
