"""Decode attention of one layer as an XLA FFI custom call, with its pure-JAX twin.

``decode_attention(qkv, k_cache, v_cache, rope, start, context_lengths, ...)`` does, for one new
token per row: q/k RMS norm (Qwen3), rotate-half RoPE at position ``start``, the in-place append of
k/v at slot ``start`` (when ``start < context_lengths``), and grouped-query attention over the
row's valid slots only::

    slot:   0 ... lo ............ p=start ... ctx ...... C-1
    row b: [ .  .  | attended slots | new |  unused      ]
    lo = p - window + 1 on a sliding-window layer, else 0; a row with nothing to attend gets 0.

The CUDA handler splits each row's valid range over ``num_splits`` blocks (flash decoding), so
its cost grows with the valid length, not the capacity; the caches are aliased to the results
(donate them to keep their buffers). ``decode_attention_ref`` is the reference path of
``models/llama.py`` (it scores the whole capacity under a mask).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_EMPTY = np.zeros((0,), np.float32)


def _check(qkv, k_cache, v_cache, rope, start, context_lengths) -> tuple[int, int, int, int]:
    if k_cache.ndim != 4 or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"decode_attention: k_cache {tuple(k_cache.shape)}, v_cache {tuple(v_cache.shape)} "
            "(expected two [B, Hkv, C, D] caches)"
        )
    b, hkv, cap, d = k_cache.shape
    width = qkv.shape[-1] if qkv.ndim == 2 else -1
    hq = width // d - 2 * hkv if width % d == 0 else -1
    if qkv.shape[:1] != (b,) or hq < hkv or hq % hkv:
        raise ValueError(
            f"decode_attention: qkv.shape={tuple(qkv.shape)} (expected [B={b}, (Hq + 2*Hkv) * D] "
            f"with Hkv={hkv} dividing Hq, D={d})"
        )
    if rope.ndim != 3 or rope.shape[1] != cap or rope.shape[0] not in (1, b):
        raise ValueError(
            f"decode_attention: rope.shape={tuple(rope.shape)} (expected [1 or B, C={cap}, rot])"
        )
    for name, t in (("start", start), ("context_lengths", context_lengths)):
        if t.shape != (b,) or jnp.dtype(t.dtype) != jnp.int32:
            raise ValueError(f"decode_attention: {name} {t.shape} {t.dtype} (expected [{b}] int32)")
    return b, hq, cap, d


def default_splits(batch: int, kv_heads: int, capacity: int) -> int:
    """Splits per (row, kv head): about 256 blocks in all, each at least 16 slots."""
    return int(max(1, min(32, 256 // max(1, batch * kv_heads), -(-capacity // 16))))


def decode_attention(
    qkv: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    rope: jax.Array,
    start: jax.Array,
    context_lengths: jax.Array,
    *,
    q_norm: jax.Array | None = None,
    k_norm: jax.Array | None = None,
    eps: float = 1e-6,
    scale: float | None = None,
    window: int = 0,
    num_splits: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One decode step of attention for one layer (see the module docstring).

    Args:
      qkv: ``[B, (Hq + 2 Hkv) D]`` the new token's q | k | v projections (bias added).
      k_cache, v_cache: ``[B, Hkv, C, D]`` in ``qkv``'s dtype; updated in place.
      rope: ``[1 or B, C, rot]`` float32 cos | sin table.
      start: ``[B]`` int32 slot (= position) of the new token.
      context_lengths: ``[B]`` int32 valid slots after this step.
      q_norm, k_norm: ``[D]`` per-head RMS norm weights (both or neither).
      eps: their epsilon.
      scale: score scale, ``D ** -0.5`` by default.
      window: sliding window in tokens (0 = full attention).
      num_splits: CUDA blocks per (row, kv head); ``default_splits`` by default.

    Returns:
      ``(out [B, Hq D], k_cache, v_cache)``.
    """
    b, hq, cap, d = _check(qkv, k_cache, v_cache, rope, start, context_lengths)
    if (q_norm is None) != (k_norm is None):
        raise ValueError("decode_attention: pass q_norm and k_norm together (Qwen3's q/k norm)")
    splits = num_splits or default_splits(b, k_cache.shape[1], cap)
    dt = k_cache.dtype
    call = jax.ffi.ffi_call(
        "edgellm_decode_attention",
        (
            jax.ShapeDtypeStruct((b, hq * d), dt),
            jax.ShapeDtypeStruct(k_cache.shape, dt),
            jax.ShapeDtypeStruct(v_cache.shape, dt),
            jax.ShapeDtypeStruct((b, hq, splits, d), jnp.float32),
            jax.ShapeDtypeStruct((b, hq, splits, 2), jnp.float32),
        ),
        input_output_aliases={1: 1, 2: 2},
        vmap_method="sequential",
    )
    empty = jnp.asarray(_EMPTY, dt)
    out, k_cache, v_cache, _, _ = call(
        qkv,
        k_cache,
        v_cache,
        rope,
        start,
        context_lengths,
        empty if q_norm is None else q_norm,
        empty if k_norm is None else k_norm,
        eps=np.float32(eps),
        scale=np.float32(d**-0.5 if scale is None else scale),
        window=np.int32(window),
    )
    return out, k_cache, v_cache


def decode_attention_ref(
    qkv: jax.Array,
    k_cache: jax.Array,
    v_cache: jax.Array,
    rope: jax.Array,
    start: jax.Array,
    context_lengths: jax.Array,
    *,
    q_norm: jax.Array | None = None,
    k_norm: jax.Array | None = None,
    eps: float = 1e-6,
    scale: float | None = None,
    window: int = 0,
    num_splits: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``decode_attention`` in plain JAX: the reference path of ``models/llama.py``."""
    from edgellm_fn.models import llama

    del num_splits
    b, hq, cap, d = _check(qkv, k_cache, v_cache, rope, start, context_lengths)
    hkv = k_cache.shape[1]
    q, k, v = jnp.split(qkv[:, None, :], [hq * d, (hq + hkv) * d], axis=-1)
    q, k, v = q.reshape(b, 1, hq, d), k.reshape(b, 1, hkv, d), v.reshape(b, 1, hkv, d)
    if q_norm is not None:
        q, k = llama.rms_norm(q, q_norm, eps), llama.rms_norm(k, k_norm, eps)
    positions = start[:, None]
    rows = jnp.zeros_like(positions) if rope.shape[0] == 1 else jnp.arange(b)[:, None]
    cos_sin = rope[rows, jnp.clip(positions, 0, cap - 1)]
    q, k = llama.apply_rope(q, cos_sin), llama.apply_rope(k, cos_sin)
    write_pos = jnp.where(positions < jnp.minimum(context_lengths, cap)[:, None], positions, cap)
    k_cache = llama.write_kv(k_cache, k, write_pos)
    v_cache = llama.write_kv(v_cache, v, write_pos)
    out = llama.attend(q, k_cache, v_cache, positions, context_lengths, window, scale=scale)
    return out.reshape(b, hq * d), k_cache, v_cache
