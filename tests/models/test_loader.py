"""Checkpoint loading: single and sharded files, dtypes, and errors naming tensor and file."""

from __future__ import annotations

import json
import pathlib
import shutil
import struct

import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.models.loader import hf_tensor_shapes
from edgellm_fn.models.safetensors_io import load_file, save_file

from ..conftest import make_hf_model


def test_sharded_checkpoint_loads_like_single_file(tmp_path, checkpoints):
    make_hf_model("llama").save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _, sharded = ef.load_checkpoint(tmp_path)
    _, single = ef.load_checkpoint(checkpoints["llama"])
    for a, b in zip(
        *(__import__("jax").tree_util.tree_leaves(p) for p in (sharded, single)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_params_take_the_requested_dtype(checkpoints, dtype):
    _, params = ef.load_checkpoint(checkpoints["qwen2"], dtype=dtype)
    assert params["layers"][0]["wqkv"].dtype == jnp.dtype(dtype)
    assert "bqkv" in params["layers"][0] and "lm_head" not in params  # qwen2: bias, tied


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_tensor(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["llama"], tmp_path / "c")
    tensors = load_file(ckpt / "model.safetensors")
    tensors = {k: np.array(v) for k, v in tensors.items() if "layers.1.mlp.up_proj" not in k}
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(
        ef.CheckpointError,
        match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(expected shape \[112, 64\]\)",
    ):
        ef.load_checkpoint(ckpt)


def test_wrong_shape(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["llama"], tmp_path / "c")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        ef.CheckpointError,
        match=r"model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' has shape \[112, 64\] \(expected \[100, 64\] from config.json\)",
    ):
        ef.load_checkpoint(ckpt)


def test_truncated_file(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["qwen3"], tmp_path / "c")
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(
        ef.CheckpointError,
        match=r"model.safetensors: tensor '.*' ends at byte \d+ but the file has \d+ bytes; the file is truncated",
    ):
        ef.load_checkpoint(ckpt)
    path.write_bytes(data[:4])
    with pytest.raises(ef.CheckpointError, match=r"expected a safetensors header"):
        ef.load_checkpoint(ckpt)


def test_missing_weights_and_missing_shard(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["llama"], tmp_path / "c")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(
        ef.CheckpointError, match=r"no model.safetensors or model.safetensors.index.json"
    ):
        ef.load_checkpoint(ckpt)
    sharded = tmp_path / "s"
    make_hf_model("llama").save_pretrained(sharded, max_shard_size="20KB")
    shard = sorted(sharded.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(ef.CheckpointError, match=rf"is in {shard.name}, which is missing"):
        ef.load_checkpoint(sharded)


def test_tensor_list_covers_every_family_option(checkpoints):
    cfg = ef.ModelConfig.from_file(checkpoints["qwen3"])
    names = hf_tensor_shapes(cfg)
    assert names["model.layers.0.self_attn.q_norm.weight"] == (24,)
    assert names["model.layers.0.self_attn.q_proj.weight"] == (96, 64)


def _sharded(tmp_path):
    ckpt = tmp_path / "s"
    make_hf_model("llama").save_pretrained(ckpt, max_shard_size="20KB")
    index = ckpt / "model.safetensors.index.json"
    return ckpt, index, json.loads(index.read_text())


@pytest.mark.parametrize(
    ("weight_map", "match"),
    [
        (
            [1, 2],
            r"weight_map=\[1, 2\] \(expected an object mapping tensor names to shard file names\)",
        ),
        ("model.safetensors", r"weight_map='model.safetensors' \(expected an object"),
        (
            {"model.norm.weight": 5},
            r"weight_map\['model.norm.weight'\]=5 \(expected a shard file name\)",
        ),
    ],
)
def test_index_weight_map_of_the_wrong_type(tmp_path, weight_map, match):
    ckpt, index, raw = _sharded(tmp_path)
    index.write_text(json.dumps({**raw, "weight_map": weight_map}))
    with pytest.raises(ef.CheckpointError, match=r"model.safetensors.index.json: " + match):
        ef.load_checkpoint(ckpt)


def test_index_files_that_are_not_json_objects(tmp_path):
    ckpt, index, _ = _sharded(tmp_path)
    index.write_bytes(b"\xff\xfe")
    with pytest.raises(ef.CheckpointError, match=r"index.json: byte 0=b'\\xff' \(expected UTF-8"):
        ef.load_checkpoint(ckpt)
    index.write_bytes(b"[" * 100_000)
    with pytest.raises(ef.CheckpointError, match=r"index.json: JSON nesting too deep"):
        ef.load_checkpoint(ckpt)
    index.write_text("[]")
    with pytest.raises(
        ef.CheckpointError, match=r"index.json: weight_map=a list \(expected an object"
    ):
        ef.load_checkpoint(ckpt)


@pytest.mark.parametrize("escape", ["abs", "../../x", "..\\x", "sub/../../x", "link/x"])
def test_shards_outside_the_checkpoint_are_refused(tmp_path, escape):
    ckpt, index, raw = _sharded(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    first = next(iter(raw["weight_map"]))
    shard = raw["weight_map"][first]
    shutil.copy(ckpt / shard, outside / "x")
    (tmp_path / "x").write_bytes((ckpt / shard).read_bytes())
    if escape == "abs":
        escape = str(outside / "x")
    if escape.startswith("link"):
        (ckpt / "link").symlink_to(outside)
    raw["weight_map"][first] = escape
    index.write_text(json.dumps(raw))
    with pytest.raises(
        ef.CheckpointError,
        match=r"index.json: weight_map\['.*'\]=.* \(expected a file (name )?inside the checkpoint directory .*\); .*outside the checkpoint",
    ):
        ef.load_checkpoint(ckpt)


def test_symlinked_shard_files_still_load(tmp_path, checkpoints):
    """The Hugging Face hub cache links each snapshot file to a blob elsewhere."""
    blobs, ckpt = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    ckpt.mkdir()
    src = pathlib.Path(checkpoints["qwen2"])
    for f in src.iterdir():
        shutil.copy(f, blobs / f.name)
        (ckpt / f.name).symlink_to(blobs / f.name)
    cfg, params = ef.load_checkpoint(ckpt)
    assert cfg.family == "qwen2" and "bqkv" in params["layers"][0]


def _rewrite(ckpt, change):
    tensors = {k: np.array(v) for k, v in load_file(ckpt / "model.safetensors").items()}
    change(tensors)
    (ckpt / "model.safetensors").unlink()
    save_file(tensors, ckpt / "model.safetensors")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_refused_unless_allowed(tmp_path, checkpoints, bad):
    ckpt = _copy(checkpoints["llama"], tmp_path / "c")
    name = "model.layers.1.self_attn.k_proj.weight"

    def poison(t):
        t[name][3, 5] = bad
        t[name][4, 0] = bad

    _rewrite(ckpt, poison)
    with pytest.raises(
        ef.CheckpointError,
        match=rf"model.safetensors: tensor '{name}' holds 2 non-finite values \(first {bad} at index \[3, 5\]; expected finite weights\); .*pass allow_non_finite=True",
    ):
        ef.load_checkpoint(ckpt)
    _, params = ef.load_checkpoint(ckpt, allow_non_finite=True)
    assert not np.isfinite(np.asarray(params["layers"][1]["wqkv"])).all()


def test_integer_dtype_on_a_float_weight_is_refused(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["llama"], tmp_path / "c")
    name = "model.norm.weight"
    _rewrite(ckpt, lambda t: t.update({name: t[name].view(np.int32)}))
    with pytest.raises(
        ef.CheckpointError,
        match=rf"model.safetensors: tensor '{name}' dtype=I32 \(expected one of \['BF16', 'F16', 'F32', 'F64'\]: it is a floating weight\)",
    ):
        ef.load_checkpoint(ckpt)


def test_hostile_header_in_a_checkpoint_names_the_file(tmp_path, checkpoints):
    ckpt = _copy(checkpoints["qwen3"], tmp_path / "c")
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = json.loads(bytes(data[8 : 8 + n]))
    name = "model.norm.weight"
    header[name]["data_offsets"] = [header[name]["data_offsets"][0], "x"]
    blob = json.dumps(header, separators=(",", ":")).encode().ljust(n)
    assert len(blob) == n
    path.write_bytes(bytes(data[:8]) + blob + bytes(data[8 + n :]))
    with pytest.raises(
        ef.CheckpointError, match=rf"model.safetensors: tensor '{name}': data_offsets=\[\d+, 'x'\]"
    ):
        ef.load_checkpoint(ckpt)
