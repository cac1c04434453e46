"""Bad step inputs raise clear errors before donation, leaving the caller's state usable."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef

from ..helpers import make_engine


@pytest.fixture(scope="module")
def engine(checkpoints):
    return make_engine(checkpoints["llama"], batch=2, max_input_len=8, kv_capacity=12)


def _prefilled(engine, n=4):
    state = ef.create_state(engine.config, 2)
    ids = np.full((2, n), 3, np.int32)
    return ef.prefill(engine, state, ef.embed(engine, ids), np.array([n, n]))


def _still_usable(engine, state):
    out = ef.decode(engine, state, ef.embed(engine, np.ones((2, 1), np.int32)))
    assert np.isfinite(np.asarray(out.io.logits)).all()


def test_prompt_longer_than_max_input_len(engine):
    state = ef.create_state(engine.config, 2)
    ids = np.ones((2, 9), np.int32)
    with pytest.raises(ef.InputError, match=r"S=9 tokens \(expected <= max_input_len=8\); shorten"):
        ef.prefill(engine, state, ef.embed(engine, ids), np.array([9, 9]))
    _still_usable(engine, ef.prefill(engine, state, ef.embed(engine, ids[:, :8]), np.array([8, 1])))


def test_batch_larger_than_max_batch(engine):
    with pytest.raises(ef.InputError, match=r"batch=3 \(expected 1..max_batch_size=2\)"):
        ef.create_state(engine.config, 3)
    state = _prefilled(engine)
    with pytest.raises(ef.InputError, match=r"batch 3 \(expected the state's batch 2"):
        ef.decode(engine, state, ef.embed(engine, np.ones((3, 1), np.int32)))
    _still_usable(engine, state)


def test_decode_past_kv_capacity(engine):
    state = _prefilled(engine, n=8)
    for _ in range(4):
        state = ef.decode(engine, state, ef.embed(engine, np.ones((2, 1), np.int32)))
    with pytest.raises(ef.InputError, match=r"row 0 holds 12 tokens \(expected < kv capacity=12\)"):
        ef.decode(engine, state, ef.embed(engine, np.ones((2, 1), np.int32)))
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [12, 12])


def test_bad_context_lengths(engine):
    state = ef.create_state(engine.config, 2)
    x = ef.embed(engine, np.ones((2, 4), np.int32))
    with pytest.raises(
        ef.InputError, match=r"context_lengths\[1\]=5 gives 5 new tokens \(expected 1..S=4"
    ):
        ef.prefill(engine, state, x, np.array([4, 5]))
    with pytest.raises(ef.InputError, match=r"context_lengths\[0\]=0 gives 0 new tokens"):
        ef.prefill(engine, state, x, np.array([0, 4]))
    with pytest.raises(ef.InputError, match=r"context_lengths has shape \[3\]"):
        ef.prefill(engine, state, x, np.array([1, 2, 3]))
    state = _prefilled(engine, n=8)
    with pytest.raises(ef.InputError, match=r"expected <= kv capacity=12"):
        ef.prefill(
            engine,
            state,
            ef.embed(engine, np.ones((2, 8), np.int32)),
            np.array([16, 9]),
            append=True,
        )
    _still_usable(engine, state)


def test_wrong_embedding_shape_and_dtype(engine):
    state = _prefilled(engine)
    with pytest.raises(ef.InputError, match=r"expected \[B, S, hidden_size=64\]"):
        ef.decode(engine, state, jnp.ones((2, 1, 32), jnp.float32))
    with pytest.raises(ef.InputError, match=r"dtype bfloat16 \(expected float32\)"):
        ef.decode(engine, state, jnp.ones((2, 1, 64), jnp.bfloat16))
    with pytest.raises(ef.InputError, match=r"S=2 \(expected 1 token per row\)"):
        ef.decode(engine, state, jnp.ones((2, 2, 64), jnp.float32))
    _still_usable(engine, state)


def test_reusing_a_donated_state_names_the_fix(engine):
    state = _prefilled(engine)
    ef.decode(engine, state, ef.embed(engine, np.ones((2, 1), np.int32)))
    with pytest.raises(ef.InputError, match=r"already donated.*state = decode\(engine, state"):
        ef.decode(engine, state, ef.embed(engine, np.ones((2, 1), np.int32)))


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([[3, 128]], r"embed: tokens\[0\]\[1\]=128 \(expected a token id 0..127, vocab_size=128\)"),
        ([[-1, 3]], r"embed: tokens\[0\]\[0\]=-1 \(expected a token id 0..127"),  # would wrap
        ([[1.0]], r"embed: tokens: token ids of dtype float(64|32) \(expected integers\)"),
    ],
)
def test_embed_refuses_ids_outside_the_vocabulary(engine, ids, match):
    with pytest.raises(ef.InputError, match=match):
        ef.embed(engine, np.array(ids))
    with pytest.raises(ef.InputError, match=match):
        ef.embed(engine, jnp.asarray(ids))  # a device array: checked too (one small read)


@pytest.mark.parametrize("bad", [128, -1, 2**31 - 1])
def test_decode_refuses_out_of_vocabulary_ids_before_donation(engine, bad):
    state = _prefilled(engine)
    for ids in (np.array([1, bad]), jnp.asarray([[1], [bad]], jnp.int32)):
        with pytest.raises(
            ef.InputError,
            match=rf"decode: token ids\[1\](\[0\])?={bad} \(expected a token id 0..127",
        ):
            ef.decode(engine, state, ids)
    _still_usable(engine, state)
