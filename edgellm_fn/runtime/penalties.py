"""Repetition, presence and frequency penalties over per-row token counts (pure, jit-safe).

Semantics:

- repetition penalty (``transformers``' ``RepetitionPenaltyLogitsProcessor``): every id seen in
  the prompt or the output so far has its logit divided by ``p`` when positive and multiplied
  by ``p`` when negative; ``p == 1`` is off.
- presence / frequency penalties (OpenAI's): ``logit[j] -= count[j] * frequency +
  (count[j] > 0) * presence``, where ``count`` counts the ids *generated* so far (as vLLM).

The counts are a ``[B, V] int32`` buffer in the decode state (``PipelineIO.counts``), updated by
each loop step; the prompt's ids are a ``[B, V] bool`` mask in ``SamplingParams.prompt_seen``.
Every value is per-row data, so no setting recompiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def apply_penalties(
    logits: jax.Array,
    prompt_seen: jax.Array,
    counts: jax.Array | None,
    repetition: jax.Array,
    presence: jax.Array,
    frequency: jax.Array,
) -> jax.Array:
    """Penalised logits.

    Args:
      logits: ``[B, V] float32``.
      prompt_seen: ``[B, V] bool`` ids of each row's prompt.
      counts: ``[B, V] int32`` ids generated so far (None: nothing generated yet).
      repetition: ``[B] float32`` > 0; 1 = off.
      presence: ``[B] float32``; 0 = off.
      frequency: ``[B] float32``; 0 = off.

    Returns:
      ``[B, V] float32``.
    """
    seen = prompt_seen if counts is None else prompt_seen | (counts > 0)
    rp = repetition[:, None]
    penalised = jnp.where(logits < 0, logits * rp, logits / rp)
    logits = jnp.where(seen, penalised, logits)
    if counts is None:
        return logits
    c = counts.astype(jnp.float32)
    return logits - c * frequency[:, None] - (c > 0).astype(jnp.float32) * presence[:, None]


def update_counts(counts: jax.Array, tokens: jax.Array, live: jax.Array) -> jax.Array:
    """``counts[b, tokens[b]] += 1`` for each ``live`` row (``tokens`` are logit columns)."""
    rows = jnp.arange(counts.shape[0], dtype=jnp.int32)
    safe = jnp.where(live, tokens, counts.shape[1])  # out of bounds: dropped
    return counts.at[rows, safe].add(live.astype(counts.dtype), mode="drop")


def prompt_mask(
    prompts: Sequence[Sequence[int]] | None, batch: int, vocab_size: int, vocab_map=None
) -> np.ndarray:
    """``[B, V] bool``: the ids of each row's prompt as logit columns.

    Args:
      prompts: per row its (full-vocabulary) prompt ids, or None (no prompt penalties).
      batch: B.
      vocab_size: V, the logit columns.
      vocab_map: the engine's reduced-vocabulary map (sorted full ids), or None; prompt ids the
        reduced vocabulary does not keep have no column and are skipped.
    """
    mask = np.zeros((batch, vocab_size), bool)
    if prompts is None:
        return mask
    kept = None if vocab_map is None else np.asarray(vocab_map)
    for b, ids in enumerate(prompts):
        ids = np.asarray(list(ids), np.int64)
        if kept is not None:
            cols = np.searchsorted(kept, ids)
            ok = (cols < kept.size) & (kept[np.minimum(cols, kept.size - 1)] == ids)
            ids = cols[ok]
        ids = ids[(ids >= 0) & (ids < vocab_size)]
        mask[b, ids] = True
    return mask
