"""Small helpers shared by the core tests: engines from checkpoints and greedy loops."""

from __future__ import annotations

import numpy as np

import edgellm_fn as ef


def make_engine(
    ckpt: str,
    *,
    dtype: str | None = None,
    batch: int = 4,
    max_input_len: int = 32,
    kv_capacity: int = 64,
) -> ef.XlaEngine:
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


def greedy(engine, prompts: list[list[int]], steps: int):
    """Prefill + ``steps`` greedy decode steps; returns ``(tokens [B, steps+1], logits list)``."""
    ids, lengths = pad(prompts)
    state = ef.create_state(engine.config, len(prompts))
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    logits = [np.asarray(state.io.logits)]
    tokens = [logits[-1].argmax(-1)]
    for _ in range(steps):
        state = ef.decode(engine, state, ef.embed(engine, tokens[-1][:, None]))
        logits.append(np.asarray(state.io.logits))
        tokens.append(logits[-1].argmax(-1))
    return np.stack(tokens, 1), logits
