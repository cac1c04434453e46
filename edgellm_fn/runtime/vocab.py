"""The runtime side of a reduced vocabulary (``models/vocab.py``): sampled logit columns back
to full ids, and full-id logit biases onto logit columns.

Sampling runs over the engine's ``[B, Vout]`` logits, so its ids are logit columns; the loops
map them to full ids with ``engine.vocab_map`` right after sampling, so every id the host sees
(tokens, top ids, EOS checks, decoding) is a full-vocabulary id. Log-probabilities stay those of
the reduced distribution (softmax over the kept ids only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError
from .sampling import SampleOutput


def to_full_ids(vocab_map: jax.Array | None, ids: jax.Array) -> jax.Array:
    """Logit columns ``ids`` (any shape) as full-vocabulary ids; ``ids`` itself without a map."""
    if vocab_map is None:
        return ids
    return jnp.take(vocab_map, ids, axis=0, mode="clip")


def map_sampled(vocab_map: jax.Array | None, out: SampleOutput) -> SampleOutput:
    """``out`` with ``tokens`` and ``top_ids`` as full-vocabulary ids."""
    if vocab_map is None:
        return out
    return dataclasses.replace(
        out, tokens=to_full_ids(vocab_map, out.tokens), top_ids=to_full_ids(vocab_map, out.top_ids)
    )


def reduce_logit_bias(vocab_map: jax.Array | None, logit_bias, batch: int):
    """Full-id ``logit_bias`` (one mapping, or one per row) keyed by logit column instead.

    Raises:
      InputError: a biased id that the reduced vocabulary does not keep (its bias could never
        apply), or a key that is not an integer id.
    """
    if vocab_map is None or logit_bias is None:
        return logit_bias
    ids = np.asarray(vocab_map)
    rows = [logit_bias] * batch if isinstance(logit_bias, Mapping) else list(logit_bias)
    out: list[dict[int, float]] = []
    for b, row in enumerate(rows):
        mapped = {}
        for key, value in (row or {}).items():
            try:
                tid = int(key)
            except (TypeError, ValueError):
                raise InputError(
                    f"generate: logit_bias[{b}] key={key!r} (expected an int token id)"
                ) from None
            col = int(np.searchsorted(ids, tid))
            if col >= ids.size or ids[col] != tid:
                raise InputError(
                    f"generate: logit_bias[{b}] id={tid} (expected an id of the reduced "
                    f"vocabulary, {ids.size} ids in vocab_map); this engine can never produce "
                    "it: drop the bias or rebuild the vocab map with it"
                )
            mapped[col] = value
        out.append(mapped)
    return out
