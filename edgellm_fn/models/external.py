"""Engine-layout weights and declared extra inputs: the tensors an engine takes as inputs.

External weights (``builder_config.external_weights``): the ONNX graph declares every weight as a
graph input instead of an initializer, so one built engine serves any weight set of the same
shape. Names and layouts are the graph's own (MatMul takes ``[in, out]``)::

    layers.{i}.attn_norm [H]      layers.{i}.wqkv [H, (Hq+2Hkv)*D]   layers.{i}.bqkv [(Hq+2Hkv)*D]?
    layers.{i}.wo [Hq*D, H]       layers.{i}.bo [H]?                 layers.{i}.q_norm/k_norm [D]?
    layers.{i}.mlp_norm [H]       layers.{i}.w_gate_up [H, 2F]       layers.{i}.b_gate_up [2F]?
    layers.{i}.w_down [F, H]      layers.{i}.b_down [H]?
    final_norm [H]                lm_head [H, Vout]  (absent when lm_head_weight is an extra input)

The embedding is not among them: the lookup runs outside the engine (``engine.embedding``).

Extra inputs (``builder_config.extra_inputs``, the general form of upstream's
``setLMHeadWeights``): named inputs from the ``EXTRA_INPUTS`` registry, each with a shape derived
from the config; today ``lm_head_weight [Vout, H]`` (model dtype), the output projection bound
at run time instead of built in.
"""

from __future__ import annotations

import numpy as np

from ..config import EngineConfig
from ..dtypes import dtype as lookup_dtype
from ..errors import ConfigError
from .llama import Params

#: The lm_head supplied at run time (``[Vout, H]``, the checkpoint's ``[out, in]`` layout).
LM_HEAD_INPUT = "lm_head_weight"


def _lm_head_shape(cfg: EngineConfig) -> tuple[int, ...]:
    return (cfg.output_vocab_size, cfg.model.hidden_size)


#: Declared extra inputs: name -> shape of the config (model dtype).
EXTRA_INPUTS = {LM_HEAD_INPUT: _lm_head_shape}


def extra_shapes(cfg: EngineConfig) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the config's declared extra inputs.

    Raises:
      ConfigError: a name not in ``EXTRA_INPUTS``.
    """
    out = {}
    for name in cfg.deployment.extra_inputs:
        if name not in EXTRA_INPUTS:
            raise ConfigError(
                f"builder_config: extra_inputs entry {name!r} (expected one of "
                f"{sorted(EXTRA_INPUTS)}); an extra input must be declared in "
                "models/external.py EXTRA_INPUTS"
            )
        out[name] = EXTRA_INPUTS[name](cfg)
    return out


def weight_shapes(cfg: EngineConfig) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the engine-layout weights (module docstring), in graph order."""
    m = cfg.model
    h, f, qkv = m.hidden_size, m.intermediate_size, m.q_size + 2 * m.kv_size
    out: dict[str, tuple[int, ...]] = {}
    for i in range(m.num_hidden_layers):
        p = f"layers.{i}."
        layer = {"attn_norm": (h,), "wqkv": (h, qkv)}
        if m.qkv_bias:
            layer["bqkv"] = (qkv,)
        if m.qk_norm:
            layer |= {"q_norm": (m.head_dim,), "k_norm": (m.head_dim,)}
        layer["wo"] = (m.q_size, h)
        if m.o_bias:
            layer["bo"] = (h,)
        layer |= {"mlp_norm": (h,), "w_gate_up": (h, 2 * f)}
        if m.mlp_bias:
            layer["b_gate_up"] = (2 * f,)
        layer["w_down"] = (f, h)
        if m.mlp_bias:
            layer["b_down"] = (h,)
        out |= {p + k: s for k, s in layer.items()}
    out["final_norm"] = (h,)
    if LM_HEAD_INPUT not in cfg.deployment.extra_inputs:
        out["lm_head"] = (h, cfg.output_vocab_size)
    return out


def engine_weights(cfg: EngineConfig, params: Params) -> dict[str, np.ndarray]:
    """``params`` (``models/llama.py``; reduced by ``models.vocab.reduce_params`` for a reduced
    vocabulary) as the engine-layout weights of ``weight_shapes(cfg)``, in ``cfg.dtype``."""
    jdt = lookup_dtype(cfg.dtype).jnp
    out = {}
    for name in weight_shapes(cfg):
        if name == "lm_head":
            value = np.asarray(params.get("lm_head", params["embed"])).T
        elif name == "final_norm":
            value = np.asarray(params["final_norm"])
        else:
            _, i, key = name.split(".")
            value = np.asarray(params["layers"][int(i)][key])
            value = value.T if value.ndim == 2 else value  # MatMul takes [in, out]
        out[name] = value.astype(jdt)
    return out


def lm_head_input(params: Params) -> np.ndarray:
    """The ``lm_head_weight`` extra input of ``params``: ``[Vout, H]``."""
    return np.asarray(params.get("lm_head", params["embed"]))
