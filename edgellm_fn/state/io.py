"""``PipelineIO``: every per-step input and output at max size, donated every step.

Each leaf is written inside the jitted step and handed to the engine from there, so over a decode
run every binding keeps its device address (upstream's pointer-stability invariant; a captured
CUDA graph stays valid). Prefill alone takes ``inputs_embeds`` as an argument: its ``S`` varies.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..runtime.sampling import SamplingConfig, SamplingParams
from .spec_io import SpecIO


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class PipelineIO:
    """Per-step I/O buffers of one batch.

    Attributes:
      inputs_embeds: ``[B, 1, H]`` model dtype: the decode step's embedded tokens.
      logits: ``[B * select_len, V]`` float32 logits of the last step.
      context_lengths: ``[B]`` int32 valid tokens per row the last step attended to.
      start_index: ``[B]`` int32 cache slot the last decode step wrote per row.
      last_token_ids: ``[B, select_len]`` int32 positions (within the step) that gave logits.
      tokens: ``[B]`` int32 ids the decode loops sampled last (``-1`` for a finished row).
      active: ``[B]`` bool rows still generating; finished rows are masked, never compacted.
      num_tokens: ``[B]`` int32 tokens generated per row (also its PRNG fold-in index).
      limits: ``[B]`` int32 most tokens each row may generate.
      hit_eos: ``[B]`` bool the row ended on an EOS id.
      row_keys: ``[B, 2]`` uint32 per-row PRNG key data.
      sampling: per-row sampling values (``[B]``, bias ``[B, N]``).
      spec: speculative-decoding buffers (``state/spec_io.py``), None for vanilla decoding.
      counts: ``[B, V]`` int32 ids each row generated so far (presence/frequency/repetition
        penalties; ``runtime/penalties.py``).
    """

    inputs_embeds: jax.Array  # [B, 1, H] model dtype
    logits: jax.Array  # [B * sel, V] f32
    context_lengths: jax.Array  # [B] i32
    start_index: jax.Array  # [B] i32
    last_token_ids: jax.Array  # [B, sel] i32
    tokens: jax.Array  # [B] i32
    active: jax.Array  # [B] bool
    num_tokens: jax.Array  # [B] i32
    limits: jax.Array  # [B] i32
    hit_eos: jax.Array  # [B] bool
    row_keys: jax.Array  # [B, 2] u32
    sampling: SamplingParams
    spec: SpecIO | None = None
    counts: jax.Array  # [B, V] i32

    @classmethod
    def create(
        cls,
        batch: int,
        vocab_size: int,
        hidden_size: int,
        dtype,
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 (frozen, hashable)
        select_len: int = 1,
    ) -> PipelineIO:
        """Allocates every buffer (each leaf separately: donation needs distinct buffers)."""
        n = sampling.max_bias_entries
        return cls(
            inputs_embeds=jnp.zeros((batch, 1, hidden_size), dtype),
            logits=jnp.zeros((batch * select_len, vocab_size), jnp.float32),
            context_lengths=jnp.zeros((batch,), jnp.int32),
            start_index=jnp.zeros((batch,), jnp.int32),
            last_token_ids=jnp.zeros((batch, select_len), jnp.int32),
            tokens=jnp.zeros((batch,), jnp.int32),
            active=jnp.zeros((batch,), bool),
            num_tokens=jnp.zeros((batch,), jnp.int32),
            limits=jnp.zeros((batch,), jnp.int32),
            hit_eos=jnp.zeros((batch,), bool),
            row_keys=jnp.zeros((batch, 2), jnp.uint32),
            sampling=SamplingParams.neutral(batch, vocab_size, n),
            counts=jnp.zeros((batch, vocab_size), jnp.int32),
        )

    @classmethod
    def create_for_spec_decode(cls, bundle, batch: int) -> PipelineIO:
        """``create`` plus the spec-decode buffers for ``bundle`` (a ``SpecDecodeConfig``)."""
        from ..dtypes import dtype

        m = bundle.base.model
        io = cls.create(batch, m.vocab_size, m.hidden_size, dtype(bundle.base.dtype).jnp)
        return dataclasses.replace(io, spec=SpecIO.create(bundle, batch))
