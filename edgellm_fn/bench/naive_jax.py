"""A plain jitted JAX Llama-family step: the benchmark's baseline ("naive-jax").

No tricks: separate q/k/v and gate/up matmuls, ``repeat`` for grouped-query heads, one KV cache
``[B, Hkv, C, D]`` per layer updated with ``dynamic_update_slice`` at a position shared by all
rows, and decode attention over the full capacity ``C`` with a mask. Embedding, final norm,
lm_head and the greedy argmax run inside the jitted step; the cache is donated.

    params = split_params(cfg, edgellm_params)        # unfused copies of the same weights
    cache = init_cache(cfg, batch, capacity, "bfloat16")
    tok, cache = prefill(cfg, params, cache, prompt_ids, rope)        # [B] next tokens
    tok, cache, pos = decode(cfg, params, cache, tok, jnp.int32(len(prompt)), rope)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from edgellm_fn.config import ModelConfig
from edgellm_fn.state.rope import rope_table as runtime_rope_table


def split_params(cfg: ModelConfig, params: dict) -> dict:
    """Unfused ``[in, out]`` copies (``wq, wk, wv, wg, wu``) of the edgellm_fn params pytree."""
    if cfg.hidden_act != "silu" or any(cfg.sliding_windows):
        raise ValueError("naive_jax: only silu and full attention (the benchmark presets)")
    q, kv = cfg.q_size, cfg.kv_size
    layers = []
    for lp in params["layers"]:
        wq, wk, wv = jnp.split(lp["wqkv"].T, [q, q + kv], axis=1)
        wg, wu = jnp.split(lp["w_gate_up"].T, 2, axis=1)
        out = dict(lp, wq=wq, wk=wk, wv=wv, wg=wg, wu=wu, wo=lp["wo"].T, w_down=lp["w_down"].T)
        del out["wqkv"], out["w_gate_up"]
        if "bqkv" in lp:
            out["bq"], out["bk"], out["bv"] = jnp.split(lp["bqkv"], [q, q + kv])
            del out["bqkv"]
        layers.append(out)
    head = (params["lm_head"] if "lm_head" in params else params["embed"]).T
    return {"embed": params["embed"], "norm": params["final_norm"], "head": head, "layers": layers}


def init_cache(cfg: ModelConfig, batch: int, capacity: int, dtype: str) -> list:
    shape = (batch, cfg.num_key_value_heads, capacity, cfg.head_dim)
    return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in cfg.sliding_windows]


def rope_table(cfg: ModelConfig, capacity: int) -> jax.Array:
    """``[C, rot]`` float32: cos of each position in the first half, sin in the second (the
    runtime's table: the peer is naive in its step, not in its setup)."""
    return runtime_rope_table(cfg.rope, capacity)[0]


def _rms(x, w, eps):
    xf = x.astype(jnp.float32)
    return w * (xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + eps)).astype(x.dtype)


def _rope(x, cs):  # x [B, S, h, D], cs [S, rot]
    half = cs.shape[-1] // 2
    cos = jnp.concatenate([cs[:, :half]] * 2, -1)[None, :, None].astype(x.dtype)
    sin = jnp.concatenate([cs[:, half:]] * 2, -1)[None, :, None].astype(x.dtype)
    r, rest = x[..., : 2 * half], x[..., 2 * half :]
    r = r * cos + jnp.concatenate([-r[..., half:], r[..., :half]], -1) * sin
    return jnp.concatenate([r, rest], -1)


def _forward(cfg: ModelConfig, p: dict, cache: list, tokens, start, rope, decoding: bool):
    b, s = tokens.shape
    hq, hkv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    x = p["embed"][tokens]
    pos = start + jnp.arange(s, dtype=jnp.int32)
    cs = jax.lax.dynamic_slice_in_dim(rope, start, s)
    new_cache = []
    for lp, (kc, vc) in zip(p["layers"], cache, strict=True):
        h = _rms(x, lp["attn_norm"], cfg.rms_norm_eps)
        q, k, v = (h @ lp[f"w{n}"] + lp.get(f"b{n}", 0) for n in "qkv")
        q, k, v = q.reshape(b, s, hq, d), k.reshape(b, s, hkv, d), v.reshape(b, s, hkv, d)
        if cfg.qk_norm:
            q = _rms(q, lp["q_norm"], cfg.rms_norm_eps)
            k = _rms(k, lp["k_norm"], cfg.rms_norm_eps)
        q, k = _rope(q, cs), _rope(k, cs)
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, hkv, S, D]
        kc = jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, 0, start, 0))
        vc = jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, 0, start, 0))
        new_cache.append((kc, vc))
        keys, vals = (kc, vc) if decoding else (k, v)  # decode: the whole capacity
        keys, vals = jnp.repeat(keys, hq // hkv, 1), jnp.repeat(vals, hq // hkv, 1)
        slot = (0 if decoding else start) + jnp.arange(keys.shape[2], dtype=jnp.int32)
        sc = jnp.einsum("bshd,bhcd->bhsc", q, keys, preferred_element_type=jnp.float32)
        sc = jnp.where(slot[None, :] <= pos[:, None], sc * d**-0.5, -1e30)
        pr = jax.nn.softmax(sc, -1).astype(x.dtype)
        o = jnp.einsum("bhsc,bhcd->bshd", pr, vals, preferred_element_type=jnp.float32)
        x = x + (o.astype(x.dtype).reshape(b, s, hq * d) @ lp["wo"] + lp.get("bo", 0))
        h = _rms(x, lp["mlp_norm"], cfg.rms_norm_eps)
        x = x + (jax.nn.silu(h @ lp["wg"]) * (h @ lp["wu"])) @ lp["w_down"]
    h = _rms(x[:, -1], p["norm"], cfg.rms_norm_eps)
    logits = jnp.matmul(h, p["head"], preferred_element_type=jnp.float32)
    return jnp.argmax(logits, -1).astype(jnp.int32), new_cache


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def prefill(cfg: ModelConfig, params: dict, cache: list, tokens: jax.Array, rope: jax.Array):
    """Prompt ``[B, S]`` from slot 0 (causal attention over the prompt); ``(next [B], cache)``."""
    return _forward(cfg, params, cache, tokens, jnp.int32(0), rope, decoding=False)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def decode(cfg: ModelConfig, params: dict, cache: list, token, pos, rope: jax.Array):
    """One token ``[B]`` at slot ``pos`` (all rows); returns ``(next [B], cache, pos + 1)``."""
    token, cache = _forward(cfg, params, cache, token[:, None], pos, rope, decoding=True)
    return token, cache, pos + 1
