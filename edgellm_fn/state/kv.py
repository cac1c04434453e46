"""``KVCache``: one k and one v slab per attention layer plus per-row lengths."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class KVCache:
    """Linear KV cache; every leaf is its own buffer (donation needs distinct buffers).

    Attributes:
      k: per layer ``[B, Hkv_l, KVcap, D_l]`` keys.
      v: per layer ``[B, Hkv_l, KVcap, D_l]`` values.
      lengths: ``[B]`` int32 valid slots of each row.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    lengths: jax.Array  # [B] int32

    @property
    def batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @classmethod
    def create(
        cls, batch: int, num_layers: int, kv_heads: int, capacity: int, head_dim: int, dtype
    ) -> KVCache:
        shape = (batch, kv_heads, capacity, head_dim)
        return cls(
            k=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            v=tuple(jnp.zeros(shape, dtype) for _ in range(num_layers)),
            lengths=jnp.zeros((batch,), jnp.int32),
        )
