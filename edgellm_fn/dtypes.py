"""The one dtype table: each dtype name the runtime uses, as JAX, ONNX, onnxruntime and TensorRT
spell it.

    dtype("bfloat16").jnp        # dtype(bfloat16), for jnp.zeros(..., dtype)
    dtype("float16").itemsize    # 2
    dtype("int32").onnx          # 6 == onnx.TensorProto.INT32
    from_ort("tensor(float)")    # "float32"
    from_tensorrt("DataType.BF16")  # "bfloat16"

The ONNX enums are the ``onnx.TensorProto.DataType`` values (fixed by the ONNX spec), so this
module imports neither ``onnx`` nor TensorRT.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DType:
    """One dtype in every spelling.

    Attributes:
      name: numpy/JAX name (``"bfloat16"``), the spelling of configs and ``EngineSpec``.
      jnp: the numpy dtype object JAX uses (``ml_dtypes`` for bfloat16).
      onnx: ``onnx.TensorProto.DataType`` enum value.
      ort: onnxruntime's type string (``NodeArg.type``).
      tensorrt: ``tensorrt.DataType`` member name.
    """

    name: str
    jnp: np.dtype
    onnx: int
    ort: str
    tensorrt: str

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.jnp.itemsize


TABLE: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", jnp.dtype(jnp.float32), 1, "tensor(float)", "FLOAT"),
        DType("float16", jnp.dtype(jnp.float16), 10, "tensor(float16)", "HALF"),
        DType("bfloat16", jnp.dtype(jnp.bfloat16), 16, "tensor(bfloat16)", "BF16"),
        DType("int32", jnp.dtype(jnp.int32), 6, "tensor(int32)", "INT32"),
        DType("int64", jnp.dtype(jnp.int64), 7, "tensor(int64)", "INT64"),
        DType("bool", jnp.dtype(jnp.bool_), 9, "tensor(bool)", "BOOL"),
    )
}
#: Activation, weight and KV-cache dtypes (what ``EngineConfig.dtype``/``kv_dtype`` accept).
FLOAT_DTYPES = ("float32", "bfloat16", "float16")

_BY_ORT = {d.ort: d.name for d in TABLE.values()}
_BY_TENSORRT = {d.tensorrt: d.name for d in TABLE.values()}


def dtype(name: str, field: str = "dtype") -> DType:
    """The table entry of ``name``.

    Raises:
      ConfigError: ``name`` is not in the table (the message names ``field``).
    """
    if name not in TABLE:
        raise ConfigError(f"dtypes: {field}={name!r} (expected one of {sorted(TABLE)})")
    return TABLE[name]


def from_ort(type_string: str) -> str:
    """Name of an onnxruntime type string (``"tensor(float)"`` → ``"float32"``); unknown ones are
    returned unchanged so an I/O check can name them."""
    return _BY_ORT.get(type_string, type_string)


def from_tensorrt(trt_dtype: object) -> str:
    """Name of a ``tensorrt.DataType`` (``DataType.HALF`` → ``"float16"``); unknown ones are
    returned as their text so an I/O check can name them."""
    text = str(trt_dtype)
    return _BY_TENSORRT.get(text.rsplit(".", 1)[-1], text)
