"""Multimodal RoPE (Qwen-VL): a per-row cos/sin table built from 3-D position ids.

Each token has three positions (temporal, height, width); rotary frequency ``j`` of a head turns
with the position of axis ``axis[j]`` (``frequency_axes``). The engine's table stays
``rope_rotary_cos_sin`` ``[ropeB = B, KVcap, rot]`` (upstream's ``mropeCosSin``,
``useContextDependentRope``): row ``b``, slot ``c`` holds the cos/sin of the token in that slot,
so the engine reads it by slot exactly as a 1-D table. A prefill writes its rows::

    slot:       0 .. first-1 | first .. ctx-1            | ctx .. KVcap-1
    positions:  kept          | the step's position_ids   | slot + delta (t = h = w)
    delta = (largest position of the row so far) + 1 - ctx    (transformers' ``rope_deltas``)

so decode steps, which append at slot ``ctx, ctx+1, ...``, continue at position
``max + 1, max + 2, ...`` on all three axes without touching the table. For text-only rows the
positions are ``0..ctx-1`` on every axis, ``delta = 0``, and the table equals the 1-D one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, MRopeConfig
from .rope import inv_frequencies


def frequency_axes(mrope: MRopeConfig, half: int) -> np.ndarray:
    """``[half]`` int32: the position axis (0 t, 1 h, 2 w) of each rotary frequency.

    Contiguous (Qwen2/2.5-VL): ``section[0]`` frequencies of t, then h, then w. Interleaved
    (Qwen3-VL, as transformers' ``Qwen3VLTextRotaryEmbedding``): frequency ``j`` is h when
    ``j % 3 == 1`` and ``j < 3 * section[1]``, w when ``j % 3 == 2`` and ``j < 3 * section[2]``,
    else t (``t h w t h w ... t t``).
    """
    if not mrope.interleaved:
        return np.concatenate(
            [np.full(n, i, np.int32) for i, n in enumerate(mrope.section)]
        ).astype(np.int32)
    j = np.arange(half)
    axes = np.zeros(half, np.int32)
    axes[(j % 3 == 1) & (j < 3 * mrope.section[1])] = 1
    axes[(j % 3 == 2) & (j < 3 * mrope.section[2])] = 2
    return axes


def mrope_cos_sin(model: ModelConfig, positions: jax.Array) -> jax.Array:
    """Cos/sin of 3-D positions: ``[3, B, N]`` int -> ``[B, N, rot]`` float32 (cos | sin)."""
    inv_freq, scaling = inv_frequencies(model.rope)
    axes = frequency_axes(model.mrope, inv_freq.shape[0])
    pos = jnp.moveaxis(jnp.take(positions, jnp.asarray(axes), axis=0), 0, -1)  # [B, N, half]
    freqs = pos.astype(jnp.float32) * jnp.asarray(inv_freq)
    s = jnp.float32(scaling)
    return jnp.concatenate([jnp.cos(freqs) * s, jnp.sin(freqs) * s], axis=-1)


def text_positions(first: jax.Array, seq_len: int) -> jax.Array:
    """``[3, B, S]`` int32 1-D positions ``first + 0..S-1`` on every axis."""
    pos = first[:, None] + jnp.arange(seq_len, dtype=jnp.int32)[None, :]
    return jnp.broadcast_to(pos, (3, *pos.shape))


def write_rows(
    model: ModelConfig,
    rope: jax.Array,
    delta: jax.Array,
    position_ids: jax.Array,
    first: jax.Array,
    context_lengths: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The table and deltas after a prefill of ``position_ids`` at slots ``first..ctx-1``.

    Args:
      model: an MRoPE model.
      rope: ``[B, C, rot]`` float32 current table; delta: ``[B]`` int32 current deltas.
      position_ids: ``[3, B, S]`` int32 positions of the step's tokens (padding ignored).
      first: ``[B]`` int32 first new slot per row (0 for a fresh prefill).
      context_lengths: ``[B]`` int32 valid slots per row after the step.

    Returns:
      ``(rope, delta)``: slots before ``first`` kept, the step's slots at their positions, the
      slots after at ``slot + delta`` (module docstring).
    """
    b, cap = rope.shape[:2]
    s = position_ids.shape[2]
    position_ids = position_ids.astype(jnp.int32)
    new = context_lengths - first  # [B]
    valid = jnp.arange(s, dtype=jnp.int32)[None, :] < new[:, None]  # [B, S]
    chunk_max = jnp.max(jnp.where(valid[None], position_ids, jnp.iinfo(jnp.int32).min), (0, 2))
    # The largest position before this step: slot first-1 sits at first-1+delta (no step yet: -1).
    before = jnp.where(first > 0, first - 1 + delta, -1)
    delta = jnp.maximum(chunk_max, before) + 1 - context_lengths
    slot = jnp.arange(cap, dtype=jnp.int32)[None, :]  # [1, C]
    idx = jnp.clip(slot - first[:, None], 0, s - 1)  # [B, C]
    in_step = (slot >= first[:, None]) & (slot < context_lengths[:, None])
    gathered = jnp.take_along_axis(position_ids, jnp.broadcast_to(idx, (3, b, cap)), axis=2)
    after = jnp.broadcast_to(slot + delta[:, None], (3, b, cap))
    table = mrope_cos_sin(model, jnp.where(in_step[None], gathered, after))
    keep = (slot < first[:, None])[..., None]
    return jnp.where(keep, rope, table), delta
