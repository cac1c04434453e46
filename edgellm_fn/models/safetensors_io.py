"""Minimal safetensors reader/writer on numpy (bf16 through ml_dtypes), with precise errors.

The reader validates the whole header first (types, counts, signs, byte spans that tile the data
section, as the safetensors format requires), then memory-maps the file, so a truncated or
corrupt file names the file, the tensor and the field at fault.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from ..config import parse_json_bytes
from ..errors import CheckpointError, show

_DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


#: Floating dtypes: the only ones a weight may have.
FLOAT_DTYPES = frozenset({"F32", "F16", "BF16", "F64"})
FLOAT_NUMPY_DTYPES = frozenset(_DTYPES[k] for k in FLOAT_DTYPES)


def dtype_name(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype (``"BF16"``), or numpy's own name."""
    return _NAMES.get(np.dtype(dtype), str(dtype))


#: Largest header the safetensors format accepts (``MAX_HEADER_SIZE`` of the Rust crate).
MAX_HEADER_BYTES = 100_000_000
_INFO_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One validated header entry: ``data[begin:end]`` (relative to the data start) holds it."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], int]:
    """Returns ``(tensors, data_start)`` of a validated header; raises ``CheckpointError``.

    As the safetensors format requires: the header is at most ``MAX_HEADER_BYTES``, UTF-8 JSON
    of ``{name: {"dtype", "shape", "data_offsets"}}`` (plus a string-to-string
    ``__metadata__``), every tensor's byte span matches its shape and dtype, and the spans tile
    the data section (in order, no overlap, no gap, nothing after the last).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(
                    f"{path}: file is {size} bytes (expected a safetensors header)"
                )
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: header length={n} (expected <= {MAX_HEADER_BYTES}, the safetensors "
                    "limit); the file is corrupt or not safetensors"
                )
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: header length {n} exceeds file size {size}; the file is truncated "
                    "or not safetensors"
                )
            blob = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from None
    where = f"{path}: safetensors header"
    header = parse_json_bytes(blob, where, CheckpointError)
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{where}: top level={type(header).__name__} (expected a JSON object)"
        )
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(
            f"{where}: __metadata__={show(metadata)} (expected a string-to-string object)"
        )
    tensors = {name: _tensor_info(path, name, info) for name, info in header.items()}
    _check_layout(path, tensors, 8 + n, size)
    return tensors, 8 + n


def _tensor_info(path: Path, name: str, info: Any) -> TensorInfo:
    where = f"{path}: tensor {show(name)}"
    if not isinstance(info, dict) or set(info) != _INFO_KEYS:
        got = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise CheckpointError(
            f"{where}: header entry={show(got)} (expected an object with exactly "
            f"{sorted(_INFO_KEYS)}); the header is corrupt"
        )
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise CheckpointError(
            f"{where}: dtype={show(dtype)} (expected one of {sorted(_DTYPES)}); unsupported dtype"
        )
    shape = info["shape"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise CheckpointError(f"{where}: shape={show(shape)} (expected a list of integers >= 0)")
    offsets = info["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise CheckpointError(
            f"{where}: data_offsets={show(offsets)} (expected [begin, end], integers with "
            "0 <= begin <= end)"
        )
    begin, end = offsets
    expected = math.prod(shape) * _DTYPES[dtype].itemsize
    if end - begin != expected:
        raise CheckpointError(
            f"{where}: spans {end - begin} bytes (expected {expected} for shape "
            f"{list(shape)} {dtype})"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(path: Path, tensors: dict[str, TensorInfo], start: int, size: int) -> None:
    """The byte spans must tile the data section ``[start, size)`` exactly, as safetensors does."""
    data_size = size - start
    pos, prev = 0, None
    for name, info in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if info.end > data_size:
            raise CheckpointError(
                f"{path}: tensor {show(name)} ends at byte {start + info.end} but the file has "
                f"{size} bytes; the file is truncated (re-download or re-save it)"
            )
        if info.begin != pos:
            kind = "overlaps" if info.begin < pos else "leaves a gap after"
            other = f"tensor {show(prev)}" if prev is not None else "the header"
            raise CheckpointError(
                f"{path}: tensor {show(name)} data_offsets=[{info.begin}, {info.end}] {kind} "
                f"{other} (expected begin={pos}); the header is corrupt"
            )
        pos, prev = info.end, name
    if pos != data_size:
        raise CheckpointError(
            f"{path}: data section is {data_size} bytes (expected {pos}, the end of the last "
            "tensor); the file has trailing bytes or a corrupt header"
        )


def load_file(path: str | Path, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Reads tensors (all, or ``names``) from one safetensors file as numpy arrays."""
    path = Path(path)
    header, start = read_header(path)
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot be memory-mapped ({e})") from None
    out = {}
    for name, info in header.items():
        if names is not None and name not in names:
            continue
        raw = data[start + info.begin : start + info.end]
        out[name] = raw.view(_DTYPES[info.dtype]).reshape(info.shape)
    return out


def save_file(tensors: Mapping[str, np.ndarray], path: str | Path, metadata: dict | None = None):
    """Writes ``tensors`` (numpy, C order) to a safetensors file."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _NAMES:
            raise CheckpointError(f"save_file: tensor {name!r} has unsupported dtype {arr.dtype}")
        header[name] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
