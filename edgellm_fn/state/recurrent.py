"""``RecurrentState``: the SSM and conv state of each Mamba2 layer of a hybrid model.

Like the KV cache it is part of ``SharedResources``, donated to every step (each leaf its own
buffer, so the addresses stay fixed), and bound to the engine as aliased pairs
``past/present_ssm_state_{i}`` and ``past/present_conv_state_{i}`` (``i`` counts Mamba layers).

A row's state is meaningful only while the row holds tokens: the engine starts every row whose
cache is empty (a fresh prefill, or an appended row at length 0) from zeros, so a new request
never sees the last request's state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..hybrid_config import MambaConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class RecurrentState:
    """Per-Mamba-layer states of one batch.

    Attributes:
      ssm: per Mamba layer ``[B, heads, head_dim, d_state]`` SSM state (``ssm_dtype``).
      conv: per Mamba layer ``[B, conv_dim, kernel - 1]`` last conv inputs, oldest first
        (model dtype).
    """

    ssm: tuple[jax.Array, ...]  # [B, nh, hd, N] each
    conv: tuple[jax.Array, ...]  # [B, conv_dim, K-1] each

    @property
    def batch(self) -> int:
        return self.ssm[0].shape[0]

    @classmethod
    def create(
        cls, batch: int, num_layers: int, mamba: MambaConfig, ssm_dtype, conv_dtype
    ) -> RecurrentState:
        """Zeroed states for ``batch`` rows and ``num_layers`` Mamba layers."""
        return cls(
            ssm=tuple(jnp.zeros(ssm_shape(mamba, batch), ssm_dtype) for _ in range(num_layers)),
            conv=tuple(jnp.zeros(conv_shape(mamba, batch), conv_dtype) for _ in range(num_layers)),
        )


def ssm_shape(mamba: MambaConfig, batch: int) -> tuple[int, int, int, int]:
    return (batch, mamba.num_heads, mamba.head_dim, mamba.state_size)


def conv_shape(mamba: MambaConfig, batch: int) -> tuple[int, int, int]:
    return (batch, mamba.conv_dim, mamba.conv_kernel - 1)
