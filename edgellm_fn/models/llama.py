"""The dense decoder (Llama 3.x, Qwen2/3, Mistral, Gemma 2/3, Phi-3) in JAX, as ``transformers``.

Params pytree (linear weights stored ``[out, in]`` as in the checkpoint, so a decode GEMV
streams contiguous rows; q/k/v and gate/up fused at load time)::

    {"embed": [V, H], "final_norm": [H], "lm_head": [V, H] (absent when tied),
     "layers": [{"attn_norm": [H], "wqkv": [(Hq+2Hkv)*D, H], "bqkv": [(Hq+2Hkv)*D]?,
                 "wo": [H, Hq*D], "bo": [H]?, "q_norm": [D]?, "k_norm": [D]?,
                 "mlp_norm": [H], "w_gate_up": [2F, H], "b_gate_up": [2F]?,
                 "w_down": [H, F], "b_down": [H]?,
                 "post_attn_norm": [H]?, "post_mlp_norm": [H]? (Gemma's sandwich norms)}, ...]}

Tensor parallelism (``engine/sharding.py``) holds the projections unfused instead: ``wq, wk, wv``
(``bq, bk, bv``) and ``w_gate, w_up`` (``b_gate, b_up``), each split on its own output rows.

KV cache writes and attention work on the full-capacity slab ``[B, Hkv, C, D]`` of each layer::

    slot:      0   1   2   3   4   5   6   7  ...  C-1
    row b:   [ k0  k1  k2 | n0  n1 | .   .   .  ...  . ]
              <- start ->  <- new ->
    a new token at position p sees slots j with j < context_length and j <= p
    (and j > p - window on a sliding-window layer); slots past a row's new tokens are never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from ..config import ModelConfig
from .lora import LayerLora
from .lora import delta as lora_delta

Params = dict[str, Any]
_NEG = -1e30

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """RMSNorm computed in float32, as transformers.

    ``offset=0`` (Llama): cast back, then times ``weight``; ``offset=1`` (Gemma): times
    ``1 + weight`` in float32, then cast back.
    """
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if offset:
        return (xf * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * xf.astype(x.dtype)


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)`` (Gemma's logit soft-capping); ``x`` itself when ``cap`` is None."""
    if cap is None:
        return x
    c = jnp.asarray(cap, x.dtype)
    return jnp.tanh(x / c) * c


def linear(x: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """``x [..., in] @ w.T`` for ``w [out, in]`` (+ ``b [out]``), in ``x.dtype``."""
    y = jax.lax.dot_general(x, w, (((x.ndim - 1,), (1,)), ((), ())))
    return y if b is None else y + b


def apply_rope(x: jax.Array, cos_sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE on the first ``rot`` channels of ``x`` ``[B, S, Hx, D]``.

    ``cos_sin`` is ``[B, S, rot]`` float32 (cos then sin halves), cast to ``x.dtype`` first.
    """
    half = cos_sin.shape[-1] // 2
    cos = jnp.concatenate([cos_sin[..., :half]] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    sin = jnp.concatenate([cos_sin[..., half:]] * 2, axis=-1)[:, :, None, :].astype(x.dtype)
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    x1, x2 = rot[..., :half], rot[..., half:]
    rotated = rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return jnp.concatenate([rotated, rest], axis=-1) if rest.shape[-1] else rotated


def attend(
    q: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    positions: jax.Array,
    context_lengths: jax.Array,
    window: int,
    scale: float | None = None,
    logit_cap: float | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Grouped-query attention of new queries over a full KV slab.

    Args:
      q: ``[B, S, Hq, D]`` queries (rotated).
      k_cache, v_cache: ``[B, Hkv, C, D]`` caches already holding this step's keys/values.
      positions: ``[B, S]`` int32 position of each query.
      context_lengths: ``[B]`` int32 valid slots of each row after this step.
      window: sliding window in tokens, 0 for full attention.
      scale: score scale, ``D ** -0.5`` by default.
      logit_cap: soft-capping of the scaled scores (``softcap``), None for none.
      mask: ``[B, S, C]`` bool slots each query sees; replaces the causal/length/window mask
        (a speculative-decoding tree, ``models/tree.py``).

    Returns:
      ``[B, S, Hq * D]`` in ``q.dtype``.
    """
    b, s, hq, d = q.shape
    hkv, cap = k_cache.shape[1], k_cache.shape[2]
    qg = q.reshape(b, s, hkv, hq // hkv, d)
    scale = d**-0.5 if scale is None else scale
    scores = jnp.einsum("bskgd,bkcd->bkgsc", qg, k_cache, preferred_element_type=jnp.float32)
    scores = softcap(scores * scale, logit_cap)
    if mask is None:
        slot = jnp.arange(cap, dtype=jnp.int32)[None, None, :]
        pos = positions[:, :, None]
        mask = (slot < context_lengths[:, None, None]) & (slot <= pos)
        if window:
            mask &= slot > pos - window
    scores = jnp.where(mask[:, None, None], scores, _NEG)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    # Probabilities are cast to the model dtype first (as transformers does); the product stays
    # in that dtype (XLA:CPU has no bf16 x bf16 -> f32 batched dot).
    out = jnp.einsum("bkgsc,bkcd->bskgd", probs, v_cache.astype(q.dtype))
    return out.reshape(b, s, hq * d)


def attend_fresh(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    context_lengths: jax.Array,
    window: int,
    scale: float | None = None,
) -> jax.Array:
    """Causal attention of a fresh prefill over its own tokens only (cuDNN flash attention).

    Args:
      q: ``[B, S, Hq, D]``; k, v: ``[B, S, Hkv, D]`` (rotated); context_lengths: ``[B]`` valid
        tokens of each right-padded row.

    Returns:
      ``[B, S, Hq * D]``; rows past a row's length are not meaningful.
    """
    b, s, hq, d = q.shape
    out = jax.nn.dot_product_attention(
        q,
        k,
        v,
        is_causal=True,
        query_seq_lengths=context_lengths,
        key_value_seq_lengths=context_lengths,
        scale=scale,
        local_window_size=(window - 1, 0) if window else None,
        implementation="cudnn",
    )
    return out.reshape(b, s, hq * d)


def write_kv(cache: jax.Array, new: jax.Array, write_pos: jax.Array) -> jax.Array:
    """Scatters ``new`` ``[B, S, Hkv, D]`` into ``cache`` ``[B, Hkv, C, D]`` at ``write_pos``.

    ``write_pos`` ``[B, S]`` holds ``C`` (out of range, dropped) for padding positions, so
    padding never overwrites a slot.
    """
    rows = jnp.arange(cache.shape[0], dtype=jnp.int32)[:, None]
    return cache.at[rows, :, write_pos].set(new.astype(cache.dtype), mode="drop")


def write_kv_fresh(cache: jax.Array, new: jax.Array) -> jax.Array:
    """Writes ``new`` ``[B, S, Hkv, D]`` into slots ``[0, S)`` of ``cache`` ``[B, Hkv, C, D]``.

    For a fresh prefill (every row starts at slot 0): one slice update instead of a scatter.
    Padding lands in slots past a row's length, which nothing reads before they are written.
    """
    return jax.lax.dynamic_update_slice(
        cache, new.transpose(0, 2, 1, 3).astype(cache.dtype), (0, 0, 0, 0)
    )


def decoder_layer(
    cfg: ModelConfig,
    lp: Params,
    x: jax.Array,
    cos_sin: jax.Array,
    positions: jax.Array,
    write_pos: jax.Array,
    context_lengths: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    window: int,
    flash: bool = False,
    lora: LayerLora | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One pre-norm decoder layer; returns ``(x, k_cache, v_cache)``.

    ``flash`` (a fresh prefill on GPU): attention over the step's own tokens with cuDNN instead
    of the masked full-capacity slab. ``lora``: each target's per-row adapter pair
    (``models/lora.py``), whose delta is added to that projection's output. ``mask``
    (``[B, S, C]`` bool, see ``attend``) replaces the causal mask (tree verification).
    """

    def adapt(y: jax.Array, inp: jax.Array, *targets: str) -> jax.Array:
        if lora is None:
            return y
        return y + jnp.concatenate([lora_delta(inp, lora[t]) for t in targets], axis=-1)

    b, s, _ = x.shape
    eps, off = cfg.rms_norm_eps, cfg.norm_offset
    if cfg.local_rope is not None:  # [global | local] tables: a sliding layer takes its own
        rot = cfg.rope.rotary_dim
        cos_sin = cos_sin[..., rot:] if window else cos_sin[..., :rot]
    h = rms_norm(x, lp["attn_norm"], eps, off)
    if "wqkv" in lp:
        qkv = adapt(linear(h, lp["wqkv"], lp.get("bqkv")), h, "q_proj", "k_proj", "v_proj")
        q, k, v = jnp.split(qkv, [cfg.q_size, cfg.q_size + cfg.kv_size], axis=-1)
    else:  # tensor-parallel layout (engine/sharding.py): each projection split on its own
        q, k, v = (adapt(linear(h, lp[f"w{n}"], lp.get(f"b{n}")), h, f"{n}_proj") for n in "qkv")
    q = q.reshape(b, s, cfg.num_attention_heads, cfg.head_dim)
    k = k.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim)
    v = v.reshape(b, s, cfg.num_key_value_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, lp["q_norm"], eps, off)
        k = rms_norm(k, lp["k_norm"], eps, off)
    q, k = apply_rope(q, cos_sin), apply_rope(k, cos_sin)
    if flash and s <= k_cache.shape[2]:
        k_cache, v_cache = write_kv_fresh(k_cache, k), write_kv_fresh(v_cache, v)
    else:
        k_cache = write_kv(k_cache, k, write_pos)
        v_cache = write_kv(v_cache, v, write_pos)
    scale = cfg.attn_scale
    if flash:
        attn = attend_fresh(q, k, v, context_lengths, window, scale)
    else:
        attn = attend(
            q, k_cache, v_cache, positions, context_lengths, window, scale, cfg.attn_softcap,
            mask=mask,
        )  # fmt: skip
    out = adapt(linear(attn, lp["wo"], lp.get("bo")), attn, "o_proj")
    if cfg.sandwich_norms:
        out = rms_norm(out, lp["post_attn_norm"], eps, off)
    x = x + out
    h = rms_norm(x, lp["mlp_norm"], eps, off)
    if "w_gate_up" in lp:
        gate_up = adapt(linear(h, lp["w_gate_up"], lp.get("b_gate_up")), h, "gate_proj", "up_proj")
        gate, up = jnp.split(gate_up, 2, axis=-1)
    else:  # tensor-parallel layout
        gate, up = (
            adapt(linear(h, lp[f"w_{n}"], lp.get(f"b_{n}")), h, f"{n}_proj") for n in ("gate", "up")
        )
    act = ACTIVATIONS[cfg.hidden_act](gate) * up
    down = adapt(linear(act, lp["w_down"], lp.get("b_down")), act, "down_proj")
    if cfg.sandwich_norms:
        down = rms_norm(down, lp["post_mlp_norm"], eps, off)
    return x + down, k_cache, v_cache


def run_layers(
    cfg: ModelConfig,
    params: Params,
    x: jax.Array,
    cos_sin: jax.Array,
    positions: jax.Array,
    write_pos: jax.Array,
    context_lengths: jax.Array,
    k_caches: Sequence[jax.Array],
    v_caches: Sequence[jax.Array],
    flash: bool = False,
    lora: Sequence[LayerLora] | None = None,
    deepstack: Sequence[jax.Array] = (),
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """All decoder layers; returns final hidden ``[B, S, H]`` (before the final norm) and caches.

    ``lora``: per layer, the rows' adapter pairs (``models.lora.gather_rows``), or None.
    ``x`` is the plain embedding lookup; ``cfg.embed_scale`` (Gemma) is applied here.
    ``deepstack`` (Qwen3-VL): ``[B, S, H]`` added to the output of layer ``i`` for the i-th
    entry (zeros where a token has no visual feature, as transformers' ``_deepstack_process``).
    """
    if cfg.embed_scale != 1.0:
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    new_k, new_v = [], []
    for i, lp in enumerate(params["layers"]):
        x, k, v = decoder_layer(
            cfg,
            lp,
            x,
            cos_sin,
            positions,
            write_pos,
            context_lengths,
            k_caches[i],
            v_caches[i],
            cfg.sliding_windows[i],
            flash,
            None if lora is None else lora[i],
        )
        if i < len(deepstack):
            x = x + deepstack[i].astype(x.dtype)
        new_k.append(k)
        new_v.append(v)
    return x, new_k, new_v


def lm_logits(cfg: ModelConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Final norm and lm_head (then ``final_softcap``); float32 logits ``[..., V]``."""
    h = rms_norm(hidden, params["final_norm"], cfg.rms_norm_eps, cfg.norm_offset)
    head = params.get("lm_head", params["embed"])  # [V, H]
    dims = (((h.ndim - 1,), (1,)), ((), ()))
    logits = jax.lax.dot_general(h, head, dims, preferred_element_type=jnp.float32)
    return softcap(logits, cfg.final_softcap)


def forward(cfg: ModelConfig, params: Params, tokens: jax.Array) -> jax.Array:
    """Full-sequence forward without a persistent cache (training, scoring).

    Args:
      tokens: ``[B, T]`` int32.

    Returns:
      ``[B, T, V]`` float32 logits.
    """
    from ..state.rope import model_rope_table

    b, t = tokens.shape
    x = params["embed"][tokens]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    cos_sin = jnp.broadcast_to(model_rope_table(cfg, t)[0], (b, t, cfg.rope_width))
    shape = (b, cfg.num_key_value_heads, t, cfg.head_dim)
    caches = [jnp.zeros(shape, x.dtype) for _ in range(cfg.num_hidden_layers)]
    lengths = jnp.full((b,), t, jnp.int32)
    hidden, _, _ = run_layers(
        cfg, params, x, cos_sin, positions, positions, lengths, caches, caches
    )
    return lm_logits(cfg, params, hidden)
