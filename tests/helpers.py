"""Helpers shared by the tests: engines from checkpoints, padding and one greedy loop."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import edgellm_fn as ef


@functools.cache
def make_engine(
    ckpt: str,
    *,
    dtype: str | None = None,
    batch: int = 4,
    max_input_len: int = 32,
    kv_capacity: int = 64,
) -> ef.XlaEngine:
    """The xla engine of ``ckpt`` with these limits, loaded once per test session.

    Engines are immutable (steps donate the state, never the params), so tests share them.
    """
    cfg, params = ef.load_checkpoint(ckpt, dtype=dtype)
    ecfg = ef.EngineConfig.create(
        cfg,
        max_batch_size=batch,
        max_input_len=max_input_len,
        kv_capacity=kv_capacity,
        dtype=dtype,
    )
    return ef.XlaEngine(ecfg, params)


def pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-pads token lists; returns ``(ids [B, S], lengths [B])``."""
    lengths = np.array([len(p) for p in prompts])
    ids = np.zeros((len(prompts), lengths.max()), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    return ids, lengths


def kv_addresses(state) -> list[int]:
    return [a.unsafe_buffer_pointer() for a in (*state.kv.k, *state.kv.v)]


def greedy(engine, prompts: list[list[int]], steps: int, **state_kwargs) -> dict[str, Any]:
    """Prefill + ``steps`` greedy decode steps through ``ef.prefill``/``ef.decode``.

    ``state_kwargs`` go to ``ef.create_state`` (e.g. ``weights=``, ``extra=``).

    Returns:
      ``tokens [B, steps+1]`` (argmax of each step's logits), ``logits [steps+1, B, V]``, the
      final ``k``/``v`` per layer and ``lengths [B]``, and ``addresses_kept`` (every KV buffer
      kept its device address).
    """
    ids, lengths = pad(prompts)
    state = ef.create_state(engine.config, len(prompts), **state_kwargs)
    before = kv_addresses(state)
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    logits = [np.asarray(state.io.logits)]
    for _ in range(steps):
        state = ef.decode(engine, state, ef.embed(engine, logits[-1].argmax(-1)[:, None]))
        logits.append(np.asarray(state.io.logits))
    stacked = np.stack(logits)
    return {
        "tokens": stacked.argmax(-1).T,
        "logits": stacked,
        "k": [np.asarray(k) for k in state.kv.k],
        "v": [np.asarray(v) for v in state.kv.v],
        "lengths": np.asarray(state.kv.lengths),
        "addresses_kept": kv_addresses(state) == before,
    }
