"""The NemotronH hybrid decoder (Mamba2 / attention / MLP layers) behind the engine contract.

Each layer is ``x + mixer(rmsnorm(x))`` with one mixer: Mamba2 (``models/mamba2.py``),
attention (GQA without RoPE, on the KV cache) or an MLP (``down(act(up(x)))``). Params::

    {"embed": [V, H], "final_norm": [H], "lm_head": [V, H] (absent when tied),
     "layers": [{"norm": [H], <Mamba2 params> | {"wqkv", "wo"} | {"w_up", "w_down"}}, ...]}

KV layer ``i`` is model layer ``hybrid.attention_layers[i]`` and Mamba layer ``j`` is
``hybrid.mamba_layers[j]`` (the local indices of ``past_key_{i}`` and ``past_ssm_state_{j}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..config import EngineConfig, ModelConfig
from . import mamba2
from .llama import ACTIVATIONS, attend, linear, write_kv

Params = dict[str, Any]

MLP_ACTIVATIONS = {**ACTIVATIONS, "relu2": lambda x: jnp.square(jax.nn.relu(x))}


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm with the weight applied in float32 before the cast back (NemotronH's)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * xf).astype(x.dtype)


def _attention(cfg: ModelConfig, lp: Params, h, positions, write_pos, context, k_cache, v_cache):
    b, s, _ = h.shape
    qkv = linear(h, lp["wqkv"])
    q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
    q = q.reshape(b, s, cfg.num_attention_heads, cfg.head_dim)
    k_cache = write_kv(k_cache, k.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim), write_pos)
    v_cache = write_kv(v_cache, v.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim), write_pos)
    attn = attend(q, k_cache, v_cache, positions, context, 0)
    return linear(attn, lp["wo"]), k_cache, v_cache


def _mlp(cfg: ModelConfig, lp: Params, h: jax.Array) -> jax.Array:
    up = MLP_ACTIVATIONS[cfg.hidden_act](linear(h, lp["w_up"], lp.get("b_up")))
    return linear(up, lp["w_down"], lp.get("b_down"))


def run_layers(
    cfg: ModelConfig,
    params: Params,
    x: jax.Array,
    positions: jax.Array,
    write_pos: jax.Array,
    context: jax.Array,
    n_new: jax.Array,
    empty: jax.Array,
    ks: list[jax.Array],
    vs: list[jax.Array],
    ssm: list[jax.Array],
    conv: list[jax.Array],
    *,
    single_step: bool,
) -> jax.Array:
    """All layers over one step; updates ``ks``/``vs``/``ssm``/``conv`` in the lists given.

    Args:
      x: ``[B, S, H]`` embedded tokens, right-padded rows.
      positions, write_pos: ``[B, S]`` position of each token, and its KV slot (capacity for
        padding: dropped).
      context: ``[B]`` valid tokens of each row after this step; n_new: ``[B]`` this step's.
      empty: ``[B]`` rows with no tokens before this step (their recurrent state starts at 0).
      single_step: static; decode (one token, recurrent update) rather than a chunked prefill.

    Returns:
      ``[B, S, H]`` hidden states before the final norm.
    """
    h = cfg.hybrid
    kv_of = {layer: i for i, layer in enumerate(h.attention_layers)}
    ssm_of = {layer: i for i, layer in enumerate(h.mamba_layers)}
    for li, (kind, lp) in enumerate(zip(h.layer_types, params["layers"], strict=True)):
        hn = rms_norm(x, lp["norm"], cfg.rms_norm_eps)
        if kind == "mamba":
            j = ssm_of[li]
            out, ssm[j], conv[j] = mamba2.mixer(
                h.mamba, lp, hn, ssm[j], conv[j], n_new, empty, single_step=single_step
            )
        elif kind == "attention":
            i = kv_of[li]
            out, ks[i], vs[i] = _attention(cfg, lp, hn, positions, write_pos, context, ks[i], vs[i])
        else:
            out = _mlp(cfg, lp, hn)
        x = x + out
    return x


def execute(
    cfg: EngineConfig, params: Params, profile: int, t: Mapping[str, jax.Array]
) -> dict[str, jax.Array]:
    """The xla provider's ``execute`` for a hybrid model: bindings in, ``present_*`` out."""
    m = cfg.model
    h = m.hybrid
    x = t["inputs_embeds"]
    b, s, _ = x.shape
    start = t["kvcache_start_index"]
    if start.shape[0] == 0:  # fresh prefill: every row starts empty, at slot 0
        start = jnp.zeros((b,), jnp.int32)
    context = t["context_lengths"]
    positions = start[:, None] + jnp.arange(s, dtype=jnp.int32)[None, :]
    write_pos = jnp.where(positions < context[:, None], positions, cfg.kv_capacity)
    nkv, nm = len(h.attention_layers), len(h.mamba_layers)
    ks = [t[f"past_key_{i}"] for i in range(nkv)]
    vs = [t[f"past_value_{i}"] for i in range(nkv)]
    ssm = [t[f"past_ssm_state_{j}"] for j in range(nm)]
    conv = [t[f"past_conv_state_{j}"] for j in range(nm)]
    hidden = run_layers(
        m, params, x, positions, write_pos, context, context - start, start == 0,
        ks, vs, ssm, conv, single_step=profile == 1 and s == 1,
    )  # fmt: skip
    picked = jnp.take_along_axis(hidden, t["last_token_ids"][:, :, None], axis=1)
    hn = rms_norm(picked, params["final_norm"], m.rms_norm_eps)
    head = params.get("lm_head", params["embed"])
    logits = jax.lax.dot_general(
        hn, head, (((2,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    out = {"logits": logits.reshape(-1, cfg.output_vocab_size)}
    for i in range(nkv):
        out[f"present_key_{i}"], out[f"present_value_{i}"] = ks[i], vs[i]
    for j in range(nm):
        out[f"present_ssm_state_{j}"], out[f"present_conv_state_{j}"] = ssm[j], conv[j]
    return out
