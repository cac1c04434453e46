"""Shared constants of the engine tests: small engine limits and the prompts they run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: Limits of every test engine (small: the CI machine is shared).
LIMITS = dict(max_batch=2, max_input_len=16, kv_capacity=32)
PROMPT_LENGTHS = (8, 5)
DECODE_STEPS = 16
#: Two random prompts (ids 3..127) of ``PROMPT_LENGTHS`` tokens.
PROMPTS = [
    row[:n].tolist()
    for row, n in zip(np.random.RandomState(0).randint(3, 128, (2, 8)), PROMPT_LENGTHS, strict=True)
]


def prompt_ids(vocab: int = 128, seed: int = 0) -> jax.Array:
    """``[2, 8]`` random prompt ids (row 1 is right-padded to 8)."""
    return jnp.asarray(np.random.RandomState(seed).randint(3, vocab, (2, 8)), jnp.int32)
