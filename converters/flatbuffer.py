"""Read and rewrite TFLite flatbuffers through the schema's object API (no byte surgery)."""
from __future__ import annotations

import dataclasses

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32,
           schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT64: np.int64}


def load(flatbuffer: bytes) -> "schema.ModelT":
    return schema.ModelT.InitFromPackedBuf(flatbuffer, 0)


class _AlignedBuilder(flatbuffers.Builder):
    """Aligns every vector to 16 bytes, as the schema's `force_align: 16` asks of buffer
    data (the Python object API ignores it): kernels cast int32 bias data to pointers,
    and the FE310 traps on misaligned word loads (QEMU does not)."""

    def StartVector(self, elemSize, numElems, alignment):
        return super().StartVector(elemSize, numElems, max(alignment, 16))


def dump(model: "schema.ModelT") -> bytes:
    builder = _AlignedBuilder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_metadata(flatbuffer: bytes, name: str, data: bytes) -> bytes:
    """``flatbuffer`` with metadata entry ``name`` holding ``data`` (added or replaced)."""
    model = load(flatbuffer)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name.encode(), len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or [] if m.name != entry.name] + [entry]
    drop_unused(model)
    return dump(model)


def metadata(model: "schema.ModelT", name: str) -> bytes | None:
    """The data of metadata entry ``name``, or None."""
    for m in model.metadata or []:
        if m.name == name.encode():
            data = model.buffers[m.buffer].data
            return b"" if data is None else np.asarray(data, np.uint8).tobytes()
    return None


def drop_unused(model: "schema.ModelT") -> None:
    """Removes tensors no operator or subgraph I/O uses, and buffers no tensor or
    metadata uses (buffer 0 stays: the schema's empty sentinel). In place."""
    used_buffers = {0} | {m.buffer for m in (model.metadata or [])}
    for sg in model.subgraphs:
        used = sorted({i for op in sg.operators for i in (*op.inputs, *op.outputs,
                                                          *(op.intermediates or []))
                       if i >= 0} | set(sg.inputs) | set(sg.outputs))
        remap = {old: new for new, old in enumerate(used)}
        sg.tensors = [sg.tensors[i] for i in used]
        for op in sg.operators:
            op.inputs = [remap[i] if i >= 0 else i for i in op.inputs]
            op.outputs = [remap[i] for i in op.outputs]
            if op.intermediates is not None:
                op.intermediates = [remap[i] for i in op.intermediates]
        sg.inputs = [remap[i] for i in sg.inputs]
        sg.outputs = [remap[i] for i in sg.outputs]
        for sig in model.signatureDefs or []:
            if sig.subgraphIndex == model.subgraphs.index(sg):
                for t in (*(sig.inputs or []), *(sig.outputs or [])):
                    t.tensorIndex = remap[t.tensorIndex]
        used_buffers |= {t.buffer for t in sg.tensors}
    kept = sorted(used_buffers)
    remap_b = {old: new for new, old in enumerate(kept)}
    model.buffers = [model.buffers[i] for i in kept]
    for sg in model.subgraphs:
        for t in sg.tensors:
            t.buffer = remap_b[t.buffer]
    for m in model.metadata or []:
        m.buffer = remap_b[m.buffer]


def op_name(model: "schema.ModelT", op) -> str:
    """Builtin operator name, e.g. "FULLY_CONNECTED" (custom ops: their custom code)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return code.customCode.decode(errors="replace")
    return _OP_NAMES[builtin]


@dataclasses.dataclass
class Tensor:
    name: str
    shape: tuple
    data: np.ndarray | None  # constant tensors only
    scale: np.ndarray
    zero_point: np.ndarray


def tensor(model: "schema.ModelT", index: int, subgraph: int = 0) -> Tensor:
    t = model.subgraphs[subgraph].tensors[index]
    raw = model.buffers[t.buffer].data if t.buffer else None
    data = None
    if raw is not None and len(raw):
        data = np.frombuffer(bytes(bytearray(raw)), _DTYPES[t.type]).reshape(t.shape)
    q = t.quantization
    scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)
    zp = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64)
    return Tensor(t.name.decode(errors="replace") if t.name else f"tensor {index}",
                  tuple(t.shape), data, scale, zp)


def cut_at(flatbuffer: bytes, tensor_index: int) -> bytes:
    """The same model with ``tensor_index`` as its only output (to compare intermediates)."""
    model = load(flatbuffer)
    model.subgraphs[0].outputs = [tensor_index]
    return dump(model)


LAYER_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TFLQ_PACKED")


def weight_bytes(flatbuffer: bytes) -> int:
    """Bytes of FC / conv weights and biases (int8 tensors) or packed blobs in the model."""
    model = load(flatbuffer)
    sg = model.subgraphs[0]
    total = 0
    for op in sg.operators:
        if op_name(model, op) in LAYER_OPS:
            for i in op.inputs[1:]:
                data = model.buffers[sg.tensors[i].buffer].data if i >= 0 else None
                total += 0 if data is None else len(data)
    return total
