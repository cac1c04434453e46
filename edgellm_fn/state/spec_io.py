"""``SpecIO``: the speculative-decoding buffers of ``PipelineIO`` (``io.spec``), fixed shapes.

Each engine call of a round has its own ``StepInputs`` (its binding buffers at that step's
shape), written inside the jitted round and donated, so every binding keeps its address from
round to round (upstream's pointer-stability invariant; graph replays stay valid)::

    verify    base,  profile 1, verify_dims(B, V):      S = V tree tokens, V logit rows each
    proposal  draft, profile 1, proposal_dims(B, P, K): S = P tree tokens, K logit rows
    accept    draft, profile 1, accept_dims(B, A):      S = A accepted tokens, 1 logit row
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..models.tree import packed_width


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class StepInputs:
    """The input bindings of one spec-decode engine call.

    Attributes:
      inputs_embeds: ``[B, S, H]`` embedded tokens.
      context_lengths: ``[B]`` int32 slots valid after the step.
      start_index: ``[B]`` int32 first slot the step writes (the committed length).
      last_token_ids: ``[B, sel]`` int32 tokens of the step that give logits.
      attention_mask: ``[B, S, ceil(S/32)]`` int32 packed tree mask (``models/tree.py``).
      attention_pos_id: ``[B, S]`` int32 positions of the tokens.
      base_hidden: ``[B, S, 3H]`` base features (draft steps; None for the base).
      draft_hidden: ``[B, S, Hd]`` the draft's own hidden states (draft steps; None for the base).
    """

    inputs_embeds: jax.Array  # [B, S, H]
    context_lengths: jax.Array  # [B] i32
    start_index: jax.Array  # [B] i32
    last_token_ids: jax.Array  # [B, sel] i32
    attention_mask: jax.Array  # [B, S, W] i32
    attention_pos_id: jax.Array  # [B, S] i32
    base_hidden: jax.Array | None = None  # [B, S, 3H]
    draft_hidden: jax.Array | None = None  # [B, S, Hd]

    @classmethod
    def create(
        cls, batch: int, seq: int, select: int, hidden: int, dtype, draft: tuple[int, int] | None
    ) -> StepInputs:
        """Zeroed buffers; ``draft = (base feature width, draft hidden)`` for a draft step."""
        return cls(
            inputs_embeds=jnp.zeros((batch, seq, hidden), dtype),
            context_lengths=jnp.zeros((batch,), jnp.int32),
            start_index=jnp.zeros((batch,), jnp.int32),
            last_token_ids=jnp.zeros((batch, select), jnp.int32),
            attention_mask=jnp.zeros((batch, seq, packed_width(seq)), jnp.int32),
            attention_pos_id=jnp.zeros((batch, seq), jnp.int32),
            base_hidden=None if draft is None else jnp.zeros((batch, seq, draft[0]), dtype),
            draft_hidden=None if draft is None else jnp.zeros((batch, seq, draft[1]), dtype),
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecIO:
    """Per-round buffers of speculative decoding (one batch).

    Attributes:
      verify, proposal, accept: the input bindings of the three engine calls of a round.
      verify_logits: ``[B * V, vocab]`` float32 base logits of every tree token.
      verify_hidden: ``[B * V, 3H]`` base features of every tree token.
      root_logits: ``[B, Vd]`` float32 draft logits after the last accepted token (level 1).
      root_hidden: ``[B, Hd]`` the draft's hidden state there (parent of level 1).
      tree_tokens: ``[B, V]`` int32 token of each tree node (node 0: the root).
      tree_parents: ``[B, V]`` int32 parent node of each node (the root's is 0).
      root: ``[B]`` int32 the last accepted token, not yet in the base KV cache.
      accepted: ``[B]`` int32 tokens the last round accepted (bonus included).
      rounds: ``[B]`` int32 rounds each row took part in.
      accepted_total: ``[B]`` int32 tokens accepted over those rounds.
    """

    verify: StepInputs
    proposal: StepInputs
    accept: StepInputs
    verify_logits: jax.Array  # [B*V, vocab] f32
    verify_hidden: jax.Array  # [B*V, 3H]
    root_logits: jax.Array  # [B, Vd] f32
    root_hidden: jax.Array  # [B, Hd]
    tree_tokens: jax.Array  # [B, V] i32
    tree_parents: jax.Array  # [B, V] i32
    root: jax.Array  # [B] i32
    accepted: jax.Array  # [B] i32
    rounds: jax.Array  # [B] i32
    accepted_total: jax.Array  # [B] i32

    @classmethod
    def create(cls, bundle, batch: int) -> SpecIO:
        """Allocates every buffer for ``bundle`` (a ``SpecDecodeConfig``) and ``batch`` rows."""
        from ..dtypes import dtype

        m, d = bundle.base.model, bundle.draft
        dt = dtype(bundle.base.dtype).jnp
        v, k = bundle.verify_size, bundle.tree_topk
        draft = (bundle.hidden_dim, d.hidden_size)
        zeros = lambda shape, t=jnp.int32: jnp.zeros(shape, t)  # noqa: E731
        return cls(
            verify=StepInputs.create(batch, v, v, m.hidden_size, dt, None),
            proposal=StepInputs.create(batch, bundle.proposal_len, k, d.hidden_size, dt, draft),
            accept=StepInputs.create(batch, bundle.accept_len, 1, d.hidden_size, dt, draft),
            verify_logits=zeros((batch * v, m.vocab_size), jnp.float32),
            verify_hidden=zeros((batch * v, bundle.hidden_dim), dt),
            root_logits=zeros((batch, d.draft_vocab_size), jnp.float32),
            root_hidden=zeros((batch, d.hidden_size), dt),
            tree_tokens=zeros((batch, v)),
            tree_parents=zeros((batch, v)),
            root=zeros((batch,)),
            accepted=zeros((batch,)),
            rounds=zeros((batch,)),
            accepted_total=zeros((batch,)),
        )
