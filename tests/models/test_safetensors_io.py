"""Hostile safetensors headers: each bad field raises CheckpointError naming file, tensor, field."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgellm_fn.errors import CheckpointError
from edgellm_fn.models.safetensors_io import MAX_HEADER_BYTES, load_file, read_header, save_file


def write_raw(path, header, data: bytes = b"") -> None:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def test_round_trip_and_zero_size_tensors(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "e": np.zeros((0, 4), np.int8)}
    save_file(tensors, tmp_path / "m.safetensors")
    out = load_file(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(out["a"], tensors["a"])
    assert out["e"].shape == (0, 4)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ([1, 2], b"", r"safetensors header: top level=list \(expected a JSON object\)"),
        ({"w": 5}, b"", r"tensor 'w': header entry='int' \(expected an object with exactly"),
        ({"w": {"dtype": "F32"}}, b"", r"tensor 'w': header entry=\['dtype'\] \(expected"),
        ({"w": entry(dtype=7)}, b"\0" * 8, r"tensor 'w': dtype=7 \(expected one of"),
        ({"w": entry(dtype="F8")}, b"\0" * 8, r"tensor 'w': dtype='F8' \(expected one of"),
        (
            {"w": entry(shape=[-2])},
            b"",
            r"tensor 'w': shape=\[-2\] \(expected a list of integers >= 0\)",
        ),
        (
            {"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}},
            b"",
            r"tensor 'w': shape='2' \(expected a list of integers",
        ),
        (
            {"w": entry(shape=[2.0])},
            b"",
            r"tensor 'w': shape=\[2.0\] \(expected a list of integers",
        ),
        (
            {"w": entry(offsets=[0])},
            b"",
            r"tensor 'w': data_offsets=\[0\] \(expected \[begin, end\]",
        ),
        (
            {"w": entry(offsets=[8, 0])},
            b"",
            r"data_offsets=\[8, 0\] \(expected \[begin, end\], integers with 0 <= begin <= end\)",
        ),
        ({"w": entry(offsets=[-8, 0])}, b"", r"data_offsets=\[-8, 0\] \(expected"),
        ({"w": entry(offsets=["0", "8"])}, b"", r"data_offsets=\['0', '8'\] \(expected"),
        (
            {"w": entry(offsets=[0, 12])},
            b"\0" * 12,
            r"tensor 'w': spans 12 bytes \(expected 8 for shape \[2\] F32\)",
        ),
        (
            {"a": entry(), "b": entry(offsets=[4, 12])},
            b"\0" * 12,
            r"tensor 'b' data_offsets=\[4, 12\] overlaps tensor 'a' \(expected begin=8\); the header is corrupt",
        ),
        (
            {"a": entry(offsets=[8, 16])},
            b"\0" * 16,
            r"tensor 'a' data_offsets=\[8, 16\] leaves a gap after the header \(expected begin=0\)",
        ),
        (
            {"a": entry(offsets=[0, 8])},
            b"\0" * 4,
            r"tensor 'a' ends at byte \d+ but the file has \d+ bytes; the file is truncated",
        ),
        (
            {"a": entry()},
            b"\0" * 12,
            r"data section is 12 bytes \(expected 8, the end of the last tensor\)",
        ),
        (
            {"__metadata__": {"format": 1}},
            b"",
            r"__metadata__=\{'format': 1\} \(expected a string-to-string object\)",
        ),
        (b'{"a": "\xff"}', b"", r"safetensors header: byte 7=b'\\xff' \(expected UTF-8 text\)"),
        (b"[" * 100_000 + b"]" * 100_000, b"", r"safetensors header: JSON nesting too deep"),
        (b"{not json", b"", r"safetensors header: invalid JSON at line 1 column 2"),
    ],
)
def test_hostile_headers_name_file_tensor_and_field(tmp_path, header, data, match):
    path = tmp_path / "m.safetensors"
    write_raw(path, header, data)
    with pytest.raises(CheckpointError, match=r"m.safetensors: .*" + match):
        load_file(path)


def test_header_size_is_capped_before_reading(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(
        CheckpointError,
        match=rf"m.safetensors: header length={MAX_HEADER_BYTES + 1} \(expected <= 100000000, the safetensors limit\)",
    ):
        read_header(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(
        CheckpointError, match=r"header length=1099511627776 \(expected <= 100000000"
    ):
        read_header(path)
