"""Bounded fuzzing of weight files: random safetensors headers and byte layouts, and random
index files. Every outcome is a load or a CheckpointError naming the file."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgellm_fn as ef
from edgellm_fn.errors import CheckpointError
from edgellm_fn.models.safetensors_io import load_file

from ..fuzz_common import JSON, Tally

HEADERS = Tally("safetensors headers")
INDEXES = Tally("index files")

DTYPE = st.one_of(st.sampled_from(["F32", "F16", "BF16", "I32", "U8", "BOOL", "F8"]), JSON)
COUNT = st.one_of(st.integers(min_value=-4, max_value=40), JSON)
ENTRY = st.one_of(
    st.fixed_dictionaries(
        {
            "dtype": DTYPE,
            "shape": st.one_of(st.lists(COUNT, max_size=3), JSON),
            "data_offsets": st.one_of(st.lists(COUNT, min_size=0, max_size=3), JSON),
        }
    ),
    JSON,
)
HEADER = st.one_of(
    st.dictionaries(st.text(max_size=4), ENTRY, max_size=4),
    st.dictionaries(st.just("__metadata__"), JSON, max_size=1),
    JSON,
)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    HEADERS.report()
    INDEXES.report()


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    header=HEADER,
    data=st.binary(max_size=96),
    claimed=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
    raw_header=st.one_of(st.none(), st.binary(max_size=32)),
)
def test_random_safetensors_files_load_or_name_the_file(
    tmp_path, header, data, claimed, raw_header
):
    path = tmp_path / "fuzz.safetensors"
    blob = (
        raw_header
        if raw_header is not None
        else json.dumps(header).encode("utf-8", "surrogatepass")
    )
    n = len(blob) if claimed is None else claimed
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    try:
        tensors = load_file(path)
    except CheckpointError as e:
        HEADERS.add("CheckpointError")
        assert str(e).startswith(f"{path}: "), str(e)
        return
    HEADERS.add("ok")
    for arr in tensors.values():  # what loaded is readable and inside the file
        assert isinstance(arr, np.ndarray)
        arr.tobytes()


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from ..conftest import make_hf_model

    path = tmp_path_factory.mktemp("fuzz_sharded")
    make_hf_model("llama").save_pretrained(path, max_shard_size="20KB")
    return path


SHARD = st.one_of(
    st.sampled_from(["/etc/passwd", "../x", "../../x", "a/../../x", "..\\x", "", "\x00"]),
    st.text(max_size=12),
    JSON,
)


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    top=st.one_of(st.none(), JSON),
    weight_map=st.one_of(st.none(), JSON),
    shard_edits=st.lists(st.tuples(st.integers(0, 30), SHARD), max_size=3),
)
def test_random_index_files_load_or_name_the_index(tmp_path, sharded, top, weight_map, shard_edits):
    ckpt = tmp_path / "c"
    if ckpt.exists():
        shutil.rmtree(ckpt)
    shutil.copytree(sharded, ckpt)
    index = ckpt / "model.safetensors.index.json"
    raw = json.loads(index.read_text())
    names = sorted(raw["weight_map"])
    for i, shard in shard_edits:
        raw["weight_map"][names[i % len(names)]] = shard
    if weight_map is not None:
        raw["weight_map"] = weight_map
    if top is not None:
        raw = top
    index.write_bytes(json.dumps(raw).encode("utf-8", "surrogatepass"))
    try:
        ef.load_checkpoint(ckpt)
    except CheckpointError as e:
        INDEXES.add("CheckpointError")
        assert "model.safetensors.index.json" in str(e) or ".safetensors" in str(e), str(e)
        return
    INDEXES.add("ok")
    for _, shard in shard_edits:  # a load succeeded: no edit pointed outside the checkpoint
        assert not (isinstance(shard, str) and (shard.startswith("/") or ".." in shard)), shard
