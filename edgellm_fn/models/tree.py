"""Tree attention for speculative decoding: the packed mask format and the base forward with
auxiliary hidden states (EAGLE3 features), on the reference layers of ``models/llama.py``.

Packed mask (upstream's ``packedAttentionMask``): ``[B, S, ceil(S/32)]`` int32; bit ``j % 32`` of
word ``j // 32`` in row ``i`` says tree token ``i`` sees tree token ``j`` (itself and its
ancestors). A step writes its ``S`` tokens into contiguous slots ``start .. start+S-1``; a token
sees every committed slot ``< start`` and the slots of the tree tokens its bits name::

    slot:    0 .. start-1 | start+0  start+1  start+2  start+3 | ...
    row b:   committed    | root     a        b        a.x     |      tree: root -> a, b; a -> a.x
    a.x sees: all         | 1        1        0        1       |      (bits 0b1011 of its word)

Tree tokens carry their own positions (``attention_pos_id``, the depth below the root plus
``start``) for RoPE and sliding windows; their slots are only storage.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ..config import ModelConfig
from . import llama


def packed_width(n: int) -> int:
    """Words per mask row for ``n`` tree tokens: ``ceil(n / 32)``."""
    return (n + 31) // 32


def pack_mask(bits: jax.Array) -> jax.Array:
    """``[..., S, N]`` bool → ``[..., S, ceil(N/32)]`` int32: bit ``j % 32`` of word ``j // 32``."""
    n = bits.shape[-1]
    w = packed_width(n)
    padded = jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, 32 * w - n)])
    words = padded.reshape(*bits.shape[:-1], w, 32).astype(jnp.uint32)
    shifts = jnp.arange(32, dtype=jnp.uint32)
    packed = jnp.sum(words << shifts, axis=-1, dtype=jnp.uint32)
    return jax.lax.bitcast_convert_type(packed, jnp.int32)


def unpack_mask(packed: jax.Array, n: int) -> jax.Array:
    """Inverse of ``pack_mask``: ``[..., S, W]`` int32 → ``[..., S, n]`` bool."""
    words = jax.lax.bitcast_convert_type(packed, jnp.uint32)
    j = jnp.arange(n, dtype=jnp.uint32)
    picked = jnp.take(words, (j // 32).astype(jnp.int32), axis=-1)
    return ((picked >> (j % 32)) & 1).astype(bool)


def tree_attention_mask(
    start: jax.Array,
    packed: jax.Array,
    positions: jax.Array,
    context_lengths: jax.Array,
    capacity: int,
    window: int = 0,
) -> jax.Array:
    """The ``[B, S, C]`` bool mask of a tree step over the full KV slab.

    Args:
      start: ``[B]`` int32 first slot of the step's tokens (the committed length).
      packed: ``[B, S, ceil(S/32)]`` int32 packed tree mask.
      positions: ``[B, S]`` int32 position of each tree token.
      context_lengths: ``[B]`` int32 slots valid after the step (slots past it are never seen).
      capacity: ``C``, KV slots per row.
      window: sliding window in tokens (0: full attention), measured in positions.
    """
    s = packed.shape[1]
    slot = jnp.arange(capacity, dtype=jnp.int32)[None, None, :]

    def place(rows: jax.Array, st: jax.Array) -> jax.Array:  # [S, S] -> [S, C] at column st
        buf = jnp.zeros((s, capacity + s), rows.dtype)
        return jax.lax.dynamic_update_slice(buf, rows, (0, st))[:, :capacity]

    committed = slot < start[:, None, None]
    in_tree = jax.vmap(place)(unpack_mask(packed, s), start)  # [B, S, C]
    mask = (committed | in_tree) & (slot < context_lengths[:, None, None])
    if window:
        rows = jnp.broadcast_to(positions[:, None, :], (positions.shape[0], s, s))
        tree_pos = jax.vmap(place)(rows, start)[:, 0]  # [B, C]
        slot_pos = jnp.where(committed[:, 0], slot[:, 0], tree_pos)
        mask &= slot_pos[:, None, :] > positions[:, :, None] - window
    return mask


def check_aux_layers(cfg: ModelConfig, aux_layers: Sequence[int]) -> tuple[int, ...]:
    """``aux_layers`` as a tuple, each in ``0..num_hidden_layers`` (the layer whose INPUT is
    taken; ``num_hidden_layers`` is the final hidden state before the norm)."""
    out = tuple(int(i) for i in aux_layers)
    bad = [i for i in out if not 0 <= i <= cfg.num_hidden_layers]
    if bad or not out:
        raise ValueError(
            f"aux layers {list(out)} (expected a non-empty list, each in 0..num_hidden_layers="
            f"{cfg.num_hidden_layers})"
        )
    return out


def run_layers_aux(
    cfg: ModelConfig,
    params: llama.Params,
    x: jax.Array,
    cos_sin: jax.Array,
    positions: jax.Array,
    write_pos: jax.Array,
    context_lengths: jax.Array,
    k_caches: Sequence[jax.Array],
    v_caches: Sequence[jax.Array],
    aux_layers: tuple[int, ...],
    tree: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, jax.Array, list[jax.Array], list[jax.Array]]:
    """All decoder layers (reference path) that also return EAGLE3's auxiliary features.

    Args:
      aux_layers: static; the layers whose input hidden states are concatenated (as upstream:
        ``hidden_states + residual`` entering layer ``i``; ``num_hidden_layers`` = the output).
      tree: ``(start [B], packed [B, S, W])`` for a tree step; None for causal attention.

    Returns:
      ``(hidden [B, S, H], aux [B, S, len(aux_layers) * H], k_caches, v_caches)``.
    """
    if cfg.embed_scale != 1.0:  # as llama.run_layers: x is the plain embedding lookup
        x = x * jnp.asarray(cfg.embed_scale, x.dtype)
    captured: dict[int, jax.Array] = {}
    new_k, new_v = [], []
    cap = k_caches[0].shape[2]
    masks = {}  # one mask per distinct sliding window, shared by its layers
    if tree is not None:
        for w in set(cfg.sliding_windows):
            masks[w] = tree_attention_mask(*tree, positions, context_lengths, cap, w)
    for i, lp in enumerate(params["layers"]):
        if i in aux_layers:
            captured[i] = x
        mask = masks.get(cfg.sliding_windows[i])
        x, k, v = llama.decoder_layer(
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
            mask=mask,
        )
        new_k.append(k)
        new_v.append(v)
    captured[cfg.num_hidden_layers] = x
    aux = jnp.concatenate([captured[i] for i in aux_layers], axis=-1)
    return x, aux, new_k, new_v
