"""Shared helpers of the engine tests: small engine directories and a greedy loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from edgellm_fn import create_state, decode, embed, prefill
from edgellm_fn.engine.protocol import Engine

#: Limits of every test engine (small: the CI machine is shared).
LIMITS = dict(max_batch=2, max_input_len=16, kv_capacity=32)
PROMPT_LENGTHS = (8, 5)
DECODE_STEPS = 16


def prompt_ids(vocab: int = 128, seed: int = 0) -> jax.Array:
    """``[2, 8]`` random prompt ids (row 1 is right-padded to 8)."""
    return jnp.asarray(np.random.RandomState(seed).randint(3, vocab, (2, 8)), jnp.int32)


def kv_addresses(state) -> list[int]:
    return [a.unsafe_buffer_pointer() for a in (*state.kv.k, *state.kv.v)]


def greedy(engine: Engine, steps: int = DECODE_STEPS) -> dict[str, object]:
    """Prefill + ``steps`` greedy decode steps; logits of every step, tokens, KV, addresses."""
    state = create_state(engine.config, 2)
    before = kv_addresses(state)
    state = prefill(engine, state, embed(engine, prompt_ids()), jnp.asarray(PROMPT_LENGTHS))
    logits, tokens = [np.asarray(state.io.logits)], []
    for _ in range(steps):
        nxt = jnp.argmax(state.io.logits, axis=-1).astype(jnp.int32)
        tokens.append(np.asarray(nxt))
        state = decode(engine, state, embed(engine, nxt[:, None]))
        logits.append(np.asarray(state.io.logits))
    return {
        "logits": np.stack(logits),
        "tokens": np.stack(tokens, axis=1),
        "k": [np.asarray(k) for k in state.kv.k],
        "v": [np.asarray(v) for v in state.kv.v],
        "lengths": np.asarray(state.kv.lengths),
        "addresses_kept": kv_addresses(state) == before,
    }
