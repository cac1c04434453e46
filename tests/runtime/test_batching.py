"""Ragged batches and chunked prefill give the same logits as single, one-shot runs."""

from __future__ import annotations

import numpy as np

import edgellm_fn as ef

from ..helpers import greedy, make_engine, pad


def test_ragged_batch_equals_each_prompt_alone(checkpoints, rng):
    engine = make_engine(checkpoints["qwen3"])
    prompts = [list(rng.randint(3, 128, n)) for n in (5, 17, 1)]
    batch = greedy(engine, prompts, steps=4)
    for row, prompt in enumerate(prompts):
        alone = greedy(engine, [prompt], steps=4)
        np.testing.assert_array_equal(batch["tokens"][row], alone["tokens"][0])
        np.testing.assert_allclose(batch["logits"][:, row], alone["logits"][:, 0], atol=2e-5)


def test_chunked_prefill_equals_one_prefill(checkpoints, rng):
    engine = make_engine(checkpoints["llama"])
    prompts = [list(rng.randint(3, 128, n)) for n in (13, 7)]
    ids, lengths = pad(prompts)
    whole = ef.prefill(engine, ef.create_state(engine.config, 2), ef.embed(engine, ids), lengths)

    split = np.array([6, 3])  # first chunk lengths per row
    first = np.zeros((2, 6), np.int32)
    second = np.zeros((2, 10), np.int32)
    for r, p in enumerate(prompts):
        first[r, : split[r]] = p[: split[r]]
        second[r, : len(p) - split[r]] = p[split[r] :]
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, ef.embed(engine, first), split)
    state = ef.prefill(engine, state, ef.embed(engine, second), lengths, append=True)
    np.testing.assert_allclose(np.asarray(state.io.logits), np.asarray(whole.io.logits), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), lengths)
    for a, b in zip(state.kv.k + state.kv.v, whole.kv.k + whole.kv.v, strict=True):
        for r, n in enumerate(lengths):
            np.testing.assert_allclose(np.asarray(a[r, :, :n]), np.asarray(b[r, :, :n]), atol=2e-5)
