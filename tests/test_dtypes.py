"""The one dtype table agrees with what onnx, JAX and TensorRT call each dtype."""

from __future__ import annotations

import jax.numpy as jnp
import onnx
import pytest

from edgellm_fn.dtypes import FLOAT_DTYPES, TABLE, dtype, from_ort, from_tensorrt
from edgellm_fn.errors import ConfigError


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_spelling_matches_its_library(name):
    d = dtype(name)
    assert d.jnp == jnp.dtype(name)
    assert d.itemsize == jnp.dtype(name).itemsize
    onnx_name = {"float32": "FLOAT", "float16": "FLOAT16"}.get(name, name.upper())
    assert d.onnx == getattr(onnx.TensorProto, onnx_name)
    assert onnx.helper.tensor_dtype_to_np_dtype(d.onnx) == d.jnp
    assert from_ort(d.ort) == name
    assert from_tensorrt(f"DataType.{d.tensorrt}") == name


def test_float_dtypes_and_itemsizes():
    assert [dtype(n).itemsize for n in FLOAT_DTYPES] == [4, 2, 2]


def test_unknown_names_are_errors_or_passed_through():
    with pytest.raises(ConfigError, match=r"dtypes: kv_dtype='fp8' \(expected one of \['bfloat16'"):
        dtype("fp8", "kv_dtype")
    assert from_ort("tensor(double)") == "tensor(double)"
    assert from_tensorrt("DataType.FP8") == "DataType.FP8"
