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


def dump(model: "schema.ModelT") -> bytes:
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def op_name(model: "schema.ModelT", op) -> str:
    """Builtin operator name, e.g. "FULLY_CONNECTED" (custom ops: their custom code)."""
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return code.customCode.decode()
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
    return Tensor(t.name.decode(), tuple(t.shape), data, scale, zp)


def cut_at(flatbuffer: bytes, tensor_index: int) -> bytes:
    """The same model with ``tensor_index`` as its only output (to compare intermediates)."""
    model = load(flatbuffer)
    model.subgraphs[0].outputs = [tensor_index]
    return dump(model)
