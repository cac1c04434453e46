"""``PipelineIO``: the fixed-shape per-step buffers, donated every step so addresses stay fixed."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineIO:
    """Per-step I/O of the last step (``inputs_embeds`` is a step argument: its ``S`` varies).

    Attributes:
      logits: ``[B * select_len, V]`` float32 logits of the last step.
      context_lengths: ``[B]`` int32 valid tokens per row after the last step.
      last_token_ids: ``[B, select_len]`` int32 positions (within the step) that gave logits.
    """

    logits: jax.Array  # [B * sel, V] f32
    context_lengths: jax.Array  # [B] i32
    last_token_ids: jax.Array  # [B, sel] i32

    @classmethod
    def create(cls, batch: int, vocab_size: int, select_len: int = 1) -> PipelineIO:
        return cls(
            logits=jnp.zeros((batch * select_len, vocab_size), jnp.float32),
            context_lengths=jnp.zeros((batch,), jnp.int32),
            last_token_ids=jnp.zeros((batch, select_len), jnp.int32),
        )
