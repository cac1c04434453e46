"""Checkpoint loading: single and sharded files, dtypes, and errors naming tensor and file."""

from __future__ import annotations

import json
import shutil

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
