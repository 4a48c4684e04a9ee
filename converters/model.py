"""The firmware stage's entrance: a flatbuffer read once, checked, into one typed model.

``read`` parses the bytes through the schema's object API and checks what the rest of
the stage (and TFLM, which reads the same bytes on the device and on the host)
assumes: every index in range, every constant buffer the size its shape and type say,
quantization parameters finite and consistent, operators in execution order. Any
failure is one ``TflqError`` line naming ``name`` and what is wrong; nothing past
``read`` has to guard against malformed input. ``check_firmware_support`` then says
whether tflq's FE310 firmware can run it (ops, types, inputs), in that order.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tflq.converters import features, verifier
from tflq.converters import flatbuffer as fb
from tflq.errors import TflqError

schema = fb.schema
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
_ITEM_BYTES = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "BOOL": 1,
               "INT16": 2, "COMPLEX64": 8, "INT8": 1, "FLOAT64": 8, "COMPLEX128": 16,
               "UINT64": 8, "UINT32": 4, "UINT16": 2}
_NUMPY = {"FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64}
_MAX_DIM = 1 << 24
_ZERO_POINT_RANGE = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767)}
# Options tflq reads (converters.packing); TFLM would read defaults, tflq refuses.
_OPTIONS = {"FULLY_CONNECTED": schema.FullyConnectedOptionsT, "CONV_2D": schema.Conv2DOptionsT,
            "DEPTHWISE_CONV_2D": schema.DepthwiseConv2DOptionsT}


@dataclasses.dataclass(frozen=True)
class Tensor:
    index: int
    name: str  # the flatbuffer's name, or "tensor <index>" when it has none
    type: str  # schema TensorType name: "INT8", "INT32", ...
    shape: tuple[int, ...]
    buffer: int
    constant: bool  # has data in the flatbuffer
    variable: bool  # state the interpreter keeps between invocations
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    quantized_dimension: int


@dataclasses.dataclass(frozen=True)
class Operator:
    index: int
    op: str  # builtin name ("FULLY_CONNECTED") or custom code
    custom: bool
    inputs: tuple[int, ...]  # tensor indices; -1 for an omitted optional input
    outputs: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Model:
    """One checked flatbuffer: its bytes, the schema objects, and typed views of them."""

    name: str
    flatbuffer: bytes
    schema: "schema.ModelT"
    tensors: tuple[Tensor, ...]
    operators: tuple[Operator, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    feature: dict | None = None  # what the firmware computes before the model (features.py)

    @property
    def op_names(self) -> list[str]:
        return sorted({op.op for op in self.operators})

    def tensor(self, index: int) -> Tensor:
        return self.tensors[index]


def read(flatbuffer: bytes, name: str = "model") -> Model:
    """The checked, typed model of ``flatbuffer``; TflqError (one line) if it is not one."""
    data = bytes(flatbuffer)

    def bad(what: str) -> TflqError:
        return TflqError(f"{name}: not a valid TFLite model: {what}")

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise bad(f"{len(data)} bytes without the TFL3 file identifier"
                  if len(data) >= 8 else f"only {len(data)} bytes")
    if verifier.verify(data) is False:  # None: no local TFLM tree to build it from
        raise bad("the flatbuffers Verifier rejects it (an offset, a vector or a string "
                  "out of bounds or misaligned)")
    try:
        model = fb.load(data)
        tensors, operators, inputs, outputs = _typed(model, data, bad)
    except TflqError:
        raise
    except Exception as e:  # noqa: BLE001 -- any parse failure of untrusted bytes
        raise bad(f"the flatbuffer does not parse ({type(e).__name__}: {e})") from None
    try:
        feature = features.declared(fb.metadata(model, features.METADATA))
    except TflqError as e:
        raise bad(str(e)) from None
    if feature is not None:
        size = int(np.prod(tensors[inputs[0]].shape)) if len(inputs) == 1 else 0
        if size != 4 * feature["bins"]:
            raise bad(f"metadata {features.METADATA!r} declares {feature['bins']} projection "
                      f"profile bins (4 * bins inputs), but the input has {size} values")
    return Model(name, data, model, tensors, operators, inputs, outputs, feature)


def _typed(model, data: bytes, bad):
    if model.version != 3:
        raise bad(f"schema version {model.version}, TFLM reads version 3")
    subgraphs = model.subgraphs or []
    if len(subgraphs) != 1:
        raise bad(f"{len(subgraphs)} subgraphs; tflq's firmware runs models of one subgraph "
                  "(no control flow)")
    sg = subgraphs[0]
    buffers = model.buffers or []
    codes = model.operatorCodes or []
    raw_tensors = sg.tensors or []
    if not raw_tensors:
        raise bad("no tensors")
    tensors = tuple(_tensor(i, t, buffers, data, bad) for i, t in enumerate(raw_tensors))
    n = len(tensors)

    def index(i, where, optional=False):
        i = int(i)
        if optional and i == -1:
            return i
        if not 0 <= i < n:
            raise bad(f"{where} names tensor {i}, but there are {n}")
        return i

    inputs = tuple(index(i, "subgraph input") for i in (sg.inputs if sg.inputs is not None else []))
    outputs = tuple(index(i, "subgraph output") for i in (sg.outputs if sg.outputs is not None else []))
    if not inputs or not outputs:
        raise bad(f"{len(inputs)} inputs and {len(outputs)} outputs")
    # Constants, inputs and variables (state: SVDF, LSTM) are there before any operator.
    available = set(inputs) | {t.index for t in tensors if t.constant or t.variable}
    operators = []
    for k, op in enumerate(sg.operators or []):
        if not 0 <= op.opcodeIndex < len(codes):
            raise bad(f"operator {k} has op code {op.opcodeIndex}, but there are {len(codes)}")
        code = codes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        custom = builtin == schema.BuiltinOperator.CUSTOM
        if custom:
            if not code.customCode:
                raise bad(f"operator {k} is a custom op without a name")
            op_name = code.customCode.decode(errors="replace")
        elif builtin in fb._OP_NAMES:
            op_name = fb._OP_NAMES[builtin]
        else:
            raise bad(f"operator {k} has builtin op code {builtin}, which the schema lacks")
        wanted = _OPTIONS.get(op_name) if not custom else None
        if wanted is not None and not isinstance(op.builtinOptions, wanted):
            raise bad(f"operator {k} ({op_name}) lacks its {wanted.__name__[:-1]}")
        ins = tuple(index(i, f"operator {k} ({op_name}) input", optional=True)
                    for i in (op.inputs if op.inputs is not None else []))
        outs = tuple(index(i, f"operator {k} ({op_name}) output")
                     for i in (op.outputs if op.outputs is not None else []))
        if not outs:
            raise bad(f"operator {k} ({op_name}) has no outputs")
        for i in ins:
            if i >= 0 and i not in available and tensors[i].type != "RESOURCE":
                raise bad(f"operator {k} ({op_name}) reads {tensors[i].name!r} before any "
                          "operator writes it (operators out of execution order?)")
        for i in outs:
            if tensors[i].constant:
                raise bad(f"operator {k} ({op_name}) writes the constant tensor "
                          f"{tensors[i].name!r}")
        available |= set(outs)
        operators.append(Operator(k, op_name, custom, ins, outs))
    if not operators:
        raise bad("no operators")
    for m in model.metadata or []:
        if not 0 <= m.buffer < len(buffers):
            label = m.name.decode(errors="replace") if m.name else "?"
            raise bad(f"metadata {label!r} names buffer {m.buffer}, but there are {len(buffers)}")
    for sig in model.signatureDefs or []:
        if sig.subgraphIndex != 0:
            raise bad(f"a signature names subgraph {sig.subgraphIndex}")
        for t in (*(sig.inputs or []), *(sig.outputs or [])):
            index(t.tensorIndex, "a signature")
    for i in outputs:
        if i not in available:
            raise bad(f"output {tensors[i].name!r} is written by no operator")
    return tensors, tuple(operators), inputs, outputs


def _tensor(i: int, t, buffers, data: bytes, bad) -> Tensor:
    name = t.name.decode(errors="replace") if t.name else f"tensor {i}"
    if t.type not in _TYPE_NAMES:
        raise bad(f"tensor {name!r} has type {t.type}, which the schema lacks")
    type_name = _TYPE_NAMES[t.type]
    shape = tuple(int(d) for d in (t.shape if t.shape is not None else []))
    if any(d < 0 or d > _MAX_DIM for d in shape) or len(shape) > 8:
        raise bad(f"tensor {name!r} has shape {list(shape)}")
    if not 0 <= t.buffer < max(len(buffers), 1):
        raise bad(f"tensor {name!r} names buffer {t.buffer}, but there are {len(buffers)}")
    constant = False
    raw = None
    if buffers and t.buffer:
        b = buffers[t.buffer]
        if b.offset or b.size:  # a large model's buffer outside the flatbuffer table
            if b.offset < 0 or b.size < 0 or b.offset + b.size > len(data):
                raise bad(f"tensor {name!r}'s buffer lies outside the file")
            raw = data[b.offset:b.offset + b.size]
        elif b.data is not None and len(b.data):
            raw = bytes(bytearray(b.data))
    if raw is not None and len(raw):
        constant = True
        item = _ITEM_BYTES.get(type_name)
        count = int(np.prod(shape)) if shape else 1
        if item is not None and len(raw) != count * item:
            raise bad(f"tensor {name!r} ({type_name} {list(shape)}) needs {count * item} bytes "
                      f"of data, its buffer holds {len(raw)}")
        if type_name in _NUMPY and not np.all(np.isfinite(np.frombuffer(raw, _NUMPY[type_name]))):
            raise bad(f"tensor {name!r} holds NaN or Inf")
    q = t.quantization
    scale = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else []))
    zero_point = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None
                                        else []))
    dim = int(q.quantizedDimension) if q is not None else 0
    if type_name in _ZERO_POINT_RANGE and zero_point:
        low, high = _ZERO_POINT_RANGE[type_name]
        if not all(low <= z <= high for z in zero_point):
            raise bad(f"tensor {name!r} ({type_name}) has a zero point outside [{low}, {high}]")
    if scale:
        if not all(np.isfinite(s) and s > 0 for s in scale):
            raise bad(f"tensor {name!r} has a quantization scale that is not finite and > 0")
        if zero_point and len(zero_point) not in (1, len(scale)):
            raise bad(f"tensor {name!r} has {len(scale)} scales and {len(zero_point)} zero points")
        # TFLM reads a 1-D tensor's scales per element whatever its quantized_dimension
        # (TFLM's person_detect has biases with dimension 3); tf.lite's interpreter does not.
        on_dim = 0 <= dim < len(shape) and shape[dim] == len(scale)
        if len(scale) > 1 and not (on_dim or shape == (len(scale),)):
            raise bad(f"tensor {name!r} has {len(scale)} per-channel scales on dimension {dim} "
                      f"of shape {list(shape)}")
    return Tensor(i, name, type_name, shape, int(t.buffer), constant, bool(t.isVariable), scale,
                  zero_point, dim)


def check_firmware_support(model: Model, supported_ops, custom_ops=()) -> None:
    """TflqError (one line) unless tflq's FE310 firmware runs ``model``: every op
    registered, int8 input and output, one of each. Ops come first, then types."""
    missing = sorted({op.op for op in model.operators
                      if (op.op not in custom_ops if op.custom else op.op not in supported_ops)})
    if missing:
        raise TflqError(
            f"{model.name}: uses op(s) {', '.join(missing)} that tflq's TFLM firmware does not "
            f"register ({len(supported_ops)} builtin ops are supported: converters/tflm.py OPS)")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise TflqError(f"{model.name}: has {len(model.inputs)} inputs and {len(model.outputs)} "
                        "outputs; tflq's firmware feeds one input and reads one output")
    for role, i in (("input", model.inputs[0]), ("output", model.outputs[0])):
        t = model.tensors[i]
        if t.type != "INT8":
            raise TflqError(f"{model.name}: its {role} {t.name!r} is {t.type}, not INT8; "
                            "convert with int8 input and output (tflq.convert does)")
