"""RoPE cos/sin table ``[ropeB, KVcap, rot]`` float32: cos in the first half, sin in the second.

Frequencies follow ``transformers.modeling_rope_utils`` for every rope type the Llama family uses.
``dynamic`` equals its short-context form while positions stay below
``original_max_position_embeddings``; a longer table is refused rather than silently wrong.
``longrope`` has two tables past that length, the short and the long factors' (``long=True``):
a row longer than ``original_max_position_embeddings`` rotates with the long one
(``engine/tensor_map.py``), as ``transformers`` switches by the running sequence length.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig, RopeConfig
from ..errors import ConfigError


def inv_frequencies(rope: RopeConfig, long: bool = False) -> tuple[np.ndarray, float]:
    """Returns ``(inv_freq [rot/2] float32, attention_scaling)`` for ``rope`` (``long``: a
    longrope's long factors)."""
    dim = rope.rotary_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    pos_freqs = np.float32(rope.theta) ** exponents
    inv_freq = (np.float32(1.0) / pos_freqs).astype(np.float32)
    scaling = 1.0
    kind = rope.rope_type
    if kind == "linear":
        inv_freq = inv_freq / np.float32(rope.factor)
    elif kind == "llama3":
        inv_freq = _llama3(inv_freq, rope)
    elif kind == "yarn":
        inv_freq, scaling = _yarn(pos_freqs, rope)
    elif kind == "longrope":
        factors = rope.long_factor if long else rope.short_factor
        inv_freq = (1.0 / (np.asarray(factors, np.float32) * pos_freqs)).astype(np.float32)
        scaling = float(rope.attention_factor)
    return inv_freq.astype(np.float32), scaling


def _llama3(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
    old = rope.original_max_position_embeddings
    low_wavelen = old / rope.low_freq_factor
    high_wavelen = old / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(pos_freqs: np.ndarray, rope: RopeConfig) -> tuple[np.ndarray, float]:
    dim, base, factor = rope.rotary_dim, rope.theta, rope.factor

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if rope.attention_factor is not None:
        scaling = rope.attention_factor
    elif rope.mscale and rope.mscale_all_dim:
        scaling = mscale(factor, rope.mscale) / mscale(factor, rope.mscale_all_dim)
    else:
        scaling = mscale(factor)

    def correction_dim(rotations: float) -> float:
        orig = rope.original_max_position_embeddings
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp.astype(np.float32)
    inv_extra = 1.0 / pos_freqs
    inv_inter = 1.0 / (factor * pos_freqs)
    inv_freq = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
    return inv_freq.astype(np.float32), float(scaling)


def rope_table(
    rope: RopeConfig, capacity: int, rope_batch: int = 1, long: bool = False
) -> jnp.ndarray:
    """Builds the cos/sin table for positions ``0..capacity-1``.

    Args:
      long: a longrope's long-factor table (the short one otherwise).

    Returns:
      ``[rope_batch, capacity, rot]`` float32; ``[..., :rot/2]`` is cos, ``[..., rot/2:]`` sin,
      both multiplied by the rope type's attention scaling.

    Raises:
      ConfigError: ``capacity`` exceeds where ``dynamic`` rope stays exact.
    """
    if rope.rope_type == "dynamic" and capacity > rope.original_max_position_embeddings:
        raise ConfigError(
            f"rope: kv capacity={capacity} (expected <= original_max_position_embeddings="
            f"{rope.original_max_position_embeddings} for rope_type={rope.rope_type!r}); its "
            "frequencies change with the sequence length past that point"
        )
    inv_freq, scaling = inv_frequencies(rope, long)
    positions = np.arange(capacity, dtype=np.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    table = np.concatenate([np.cos(freqs) * scaling, np.sin(freqs) * scaling], axis=-1)
    table = np.broadcast_to(table.astype(np.float32), (rope_batch, *table.shape))
    return jnp.asarray(table)


def model_rope_table(
    model: ModelConfig, capacity: int, rope_batch: int = 1, long: bool = False
) -> jnp.ndarray:
    """The engine's ``rope_rotary_cos_sin`` ``[rope_batch, capacity, model.rope_width]``.

    ``rope_table(model.rope)``, followed on the last axis by ``rope_table(model.local_rope)``
    when the sliding-window layers have their own RoPE (Gemma 3). ``long``: longrope's
    long-factor tables.
    """
    table = rope_table(model.rope, capacity, rope_batch, long)
    if model.local_rope is None:
        return table
    local = rope_table(model.local_rope, capacity, rope_batch, long)
    return jnp.concatenate([table, local], axis=-1)
