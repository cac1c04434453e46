"""NemotronH checkpoint tensor names and shapes, and their mapping onto ``models/hybrid.py``.

Hugging Face names (under ``backbone.layers.i.``, the prefix of the hub's files and of
``save_pretrained``): ``norm.weight`` and one ``mixer.*`` set per layer: Mamba2 ``in_proj``,
``conv1d`` (``[conv_dim, 1, K]``), ``dt_bias``, ``A_log``, ``D``, ``norm``, ``out_proj``;
attention ``q/k/v/o_proj`` (fused into ``wqkv`` at load); MLP ``up_proj``/``down_proj``. The top
level has ``backbone.embeddings``, ``backbone.norm_f`` and ``lm_head``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, normalize_dtype
from ..dtypes import dtype as lookup_dtype

Params = dict


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a NemotronH checkpoint must hold, with its Hugging Face shape."""
    h, mc = cfg.hidden_size, cfg.hybrid.mamba
    shapes: dict[str, tuple[int, ...]] = {
        "backbone.embeddings.weight": (cfg.vocab_size, h),
        "backbone.norm_f.weight": (h,),
    }
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    for i, kind in enumerate(cfg.hybrid.layer_types):
        p = f"backbone.layers.{i}."
        shapes[p + "norm.weight"] = (h,)
        x = p + "mixer."
        if kind == "mamba":
            inter = mc.intermediate_size
            shapes.update(
                {
                    x + "in_proj.weight": (mc.in_proj_size, h),
                    x + "conv1d.weight": (mc.conv_dim, 1, mc.conv_kernel),
                    x + "dt_bias": (mc.num_heads,),
                    x + "A_log": (mc.num_heads,),
                    x + "D": (mc.num_heads,),
                    x + "norm.weight": (inter,),
                    x + "out_proj.weight": (h, inter),
                }
            )
            if mc.conv_bias:
                shapes[x + "conv1d.bias"] = (mc.conv_dim,)
            if mc.proj_bias:
                shapes[x + "in_proj.bias"] = (mc.in_proj_size,)
                shapes[x + "out_proj.bias"] = (h,)
        elif kind == "attention":
            for name, out in (("q", cfg.q_size), ("k", cfg.kv_size), ("v", cfg.kv_size)):
                shapes[x + f"{name}_proj.weight"] = (out, h)
            shapes[x + "o_proj.weight"] = (h, cfg.q_size)
        else:
            f = cfg.intermediate_size
            shapes[x + "up_proj.weight"] = (f, h)
            shapes[x + "down_proj.weight"] = (h, f)
            if cfg.mlp_bias:
                shapes[x + "up_proj.bias"] = (f,)
                shapes[x + "down_proj.bias"] = (h,)
    return shapes


#: Mamba2 params key -> Hugging Face name under ``mixer.``.
_MAMBA = {
    "in_proj": "in_proj.weight",
    "in_proj_b": "in_proj.bias",
    "conv_b": "conv1d.bias",
    "dt_bias": "dt_bias",
    "A_log": "A_log",
    "D": "D",
    "gate_norm": "norm.weight",
    "out_proj": "out_proj.weight",
    "out_proj_b": "out_proj.bias",
}


def params_from_hf(cfg: ModelConfig, tensors: dict[str, np.ndarray], dtype: str) -> Params:
    """The ``models/hybrid.py`` params pytree from checked tensors, cast to ``dtype``."""
    jdt = lookup_dtype(normalize_dtype(dtype, "dtype")).jnp

    def put(name: str):
        return jnp.asarray(np.asarray(tensors[name], np.float32), jdt)

    params: Params = {
        "embed": put("backbone.embeddings.weight"),
        "final_norm": put("backbone.norm_f.weight"),
    }
    if not cfg.tie_word_embeddings:
        params["lm_head"] = put("lm_head.weight")
    layers = []
    for i, kind in enumerate(cfg.hybrid.layer_types):
        p = f"backbone.layers.{i}."
        x = p + "mixer."
        lp = {"norm": put(p + "norm.weight")}
        if kind == "mamba":
            lp.update({k: put(x + hf) for k, hf in _MAMBA.items() if x + hf in tensors})
            w = np.asarray(tensors[x + "conv1d.weight"], np.float32)
            lp["conv_w"] = jnp.asarray(w[:, 0, :], jdt)
        elif kind == "attention":
            qkv = np.concatenate(
                [np.asarray(tensors[x + f"{n}_proj.weight"], np.float32) for n in "qkv"], 0
            )
            lp["wqkv"] = jnp.asarray(qkv, jdt)
            lp["wo"] = put(x + "o_proj.weight")
        else:
            lp["w_up"], lp["w_down"] = put(x + "up_proj.weight"), put(x + "down_proj.weight")
            if cfg.mlp_bias:
                lp["b_up"], lp["b_down"] = put(x + "up_proj.bias"), put(x + "down_proj.bias")
        layers.append(lp)
    params["layers"] = layers
    return params
