"""Loading a Hugging Face checkpoint directory into ``(ModelConfig, params)`` and saving one back.

Single-file (``model.safetensors``) and sharded (``model.safetensors.index.json``) checkpoints are
read; q/k/v and gate/up projections are fused, keeping the checkpoint's ``[out, in]`` layout
(see ``models/llama.py`` for the params pytree).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, normalize_dtype
from ..dtypes import dtype as lookup_dtype
from ..errors import CheckpointError
from .llama import Params
from .safetensors_io import load_file, read_header, save_file


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the checkpoint must hold, with its Hugging Face shape ``[out, in]``."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (cfg.vocab_size, h),
        "model.norm.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        for name, out in (("q", cfg.q_size), ("k", cfg.kv_size), ("v", cfg.kv_size)):
            shapes[p + f"self_attn.{name}_proj.weight"] = (out, h)
            if cfg.qkv_bias:
                shapes[p + f"self_attn.{name}_proj.bias"] = (out,)
        shapes[p + "self_attn.o_proj.weight"] = (h, cfg.q_size)
        if cfg.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (h,)
        if cfg.qk_norm:
            shapes[p + "self_attn.q_norm.weight"] = (d,)
            shapes[p + "self_attn.k_norm.weight"] = (d,)
        for name, shape in (("gate", (f, h)), ("up", (f, h)), ("down", (h, f))):
            shapes[p + f"mlp.{name}_proj.weight"] = shape
            if cfg.mlp_bias:
                shapes[p + f"mlp.{name}_proj.bias"] = shape[:1]
    return shapes


def _locate(ckpt: Path) -> dict[str, Path]:
    """Maps each tensor name to the file that holds it."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: invalid index ({e}); expected a 'weight_map'") from e
        files = {}
        for name, shard in weight_map.items():
            path = ckpt / shard
            if not path.is_file():
                raise CheckpointError(f"{index}: tensor {name!r} is in {shard}, which is missing")
            files[name] = path
        return files
    single = ckpt / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(
            f"{ckpt}: no model.safetensors or model.safetensors.index.json (expected a Hugging "
            "Face checkpoint saved with safetensors)"
        )
    header, _ = read_header(single)
    return dict.fromkeys(header, single)


def load_hf_tensors(ckpt: str | Path, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Reads and shape-checks every tensor ``cfg`` needs; extra tensors are ignored."""
    ckpt = Path(ckpt)
    located = _locate(ckpt)
    shapes = hf_tensor_shapes(cfg)
    by_file: dict[Path, set[str]] = {}
    for name in shapes:
        if name not in located:
            raise CheckpointError(
                f"{ckpt}: missing tensor {name!r} (expected shape {list(shapes[name])})"
            )
        by_file.setdefault(located[name], set()).add(name)
    tensors: dict[str, np.ndarray] = {}
    for path, names in sorted(by_file.items()):
        tensors.update(load_file(path, names))
    for name, shape in shapes.items():
        if tensors[name].shape != shape:
            raise CheckpointError(
                f"{located[name]}: tensor {name!r} has shape {list(tensors[name].shape)} (expected "
                f"{list(shape)} from config.json)"
            )
    return tensors


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype: str) -> Params:
    """Fuses Hugging Face tensors into the params pytree, cast to ``dtype``."""
    jdt = lookup_dtype(normalize_dtype(dtype, "dtype")).jnp

    def t(name: str) -> np.ndarray:
        return np.asarray(tensors[name], np.float32)

    def put(x: np.ndarray):
        return jnp.asarray(x, jdt)

    params: Params = {
        "embed": put(t("model.embed_tokens.weight")),
        "final_norm": put(t("model.norm.weight")),
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = put(t("lm_head.weight"))
    layers = []
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        lp = {
            "attn_norm": put(t(p + "input_layernorm.weight")),
            "mlp_norm": put(t(p + "post_attention_layernorm.weight")),
            "wqkv": put(np.concatenate([t(a + f"{n}_proj.weight") for n in "qkv"], 0)),
            "wo": put(t(a + "o_proj.weight")),
            "w_gate_up": put(
                np.concatenate([t(m + "gate_proj.weight"), t(m + "up_proj.weight")], 0)
            ),
            "w_down": put(t(m + "down_proj.weight")),
        }
        if cfg.qkv_bias:
            lp["bqkv"] = put(np.concatenate([t(a + f"{n}_proj.bias") for n in "qkv"]))
        if cfg.o_bias:
            lp["bo"] = put(t(a + "o_proj.bias"))
        if cfg.qk_norm:
            lp["q_norm"] = put(t(a + "q_norm.weight"))
            lp["k_norm"] = put(t(a + "k_norm.weight"))
        if cfg.mlp_bias:
            lp["b_gate_up"] = put(np.concatenate([t(m + "gate_proj.bias"), t(m + "up_proj.bias")]))
            lp["b_down"] = put(t(m + "down_proj.bias"))
        layers.append(lp)
    params["layers"] = layers
    return params


def load_checkpoint(ckpt: str | Path, dtype: str | None = None) -> tuple[ModelConfig, Params]:
    """Loads ``config.json`` and the safetensors weights of a Hugging Face checkpoint directory.

    Args:
      ckpt: checkpoint directory.
      dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``; defaults to the checkpoint's.

    Raises:
      ConfigError: config.json is missing or invalid.
      CheckpointError: a weight file or tensor is missing, truncated or of the wrong shape.
    """
    cfg = ModelConfig.from_file(Path(ckpt) / "config.json")
    tensors = load_hf_tensors(ckpt, cfg)
    return cfg, params_from_hf(cfg, tensors, dtype or cfg.dtype)


def params_to_hf(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """Inverse of ``params_from_hf``: Hugging Face tensor names and ``[out, in]`` layouts."""

    def n(x) -> np.ndarray:
        return np.asarray(x)

    out = {
        "model.embed_tokens.weight": n(params["embed"]),
        "model.norm.weight": n(params["final_norm"]),
    }
    if not cfg.tie_word_embeddings:
        out["lm_head.weight"] = n(params["lm_head"])
    q, kv = cfg.q_size, cfg.kv_size
    for i, lp in enumerate(params["layers"]):
        p = f"model.layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        out[p + "input_layernorm.weight"] = n(lp["attn_norm"])
        out[p + "post_attention_layernorm.weight"] = n(lp["mlp_norm"])
        wq, wk, wv = np.split(n(lp["wqkv"]), [q, q + kv], axis=0)
        out.update({a + "q_proj.weight": wq, a + "k_proj.weight": wk, a + "v_proj.weight": wv})
        out[a + "o_proj.weight"] = n(lp["wo"])
        gate, up = np.split(n(lp["w_gate_up"]), 2, axis=0)
        out.update({m + "gate_proj.weight": gate, m + "up_proj.weight": up})
        out[m + "down_proj.weight"] = n(lp["w_down"])
        if "bqkv" in lp:
            bq, bk, bv = np.split(n(lp["bqkv"]), [q, q + kv])
            out.update({a + "q_proj.bias": bq, a + "k_proj.bias": bk, a + "v_proj.bias": bv})
        if "bo" in lp:
            out[a + "o_proj.bias"] = n(lp["bo"])
        if "q_norm" in lp:
            out[a + "q_norm.weight"] = n(lp["q_norm"])
            out[a + "k_norm.weight"] = n(lp["k_norm"])
        if "b_gate_up" in lp:
            bg, bu = np.split(n(lp["b_gate_up"]), 2)
            out.update({m + "gate_proj.bias": bg, m + "up_proj.bias": bu})
            out[m + "down_proj.bias"] = n(lp["b_down"])
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_weights(cfg: ModelConfig, params: Params, path: str | Path) -> None:
    """Writes ``params`` as a Hugging Face ``model.safetensors`` file."""
    save_file(params_to_hf(cfg, params), path)
