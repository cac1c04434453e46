"""Prefix caching: restored prefixes give the same logits and tokens as a full prefill."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.prefix_cache import (
    PrefixStore,
    prefill_with_prefixes,
    restore_prefix,
    save_prefix,
)
from edgellm_fn.runtime.sampling import make_sampling_params

from ..helpers import make_engine, pad

SYSTEM = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


@pytest.fixture(scope="module")
def engine(checkpoints):
    return make_engine(checkpoints["qwen2"], batch=3, max_input_len=32, kv_capacity=64)


def _greedy(engine, state, lengths, n=8):
    config, params = make_sampling_params(state.batch, vocab_size=128, top_k=1)
    limits = loops.token_limits(engine, lengths, n)
    _, res = loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(), max_new_tokens=n
    )
    return np.asarray(res.tokens)


def test_restored_prefix_generates_the_same_tokens(engine):
    prompts = [SYSTEM + [40, 41, 42], SYSTEM[:6] + [7, 8], [90, 91, 92, 93]]
    ids, lengths = pad(prompts)
    full = ef.prefill(engine, ef.create_state(engine.config, 3), ef.embed(engine, ids), lengths)
    full_logits = np.asarray(full.io.logits)
    full_tokens = _greedy(engine, full, lengths)

    warm = ef.create_state(engine.config, 1)
    warm = ef.prefill(engine, warm, ef.embed(engine, np.array([SYSTEM])), np.array([10]))
    store = PrefixStore()
    store.add(save_prefix(warm, 0, SYSTEM))
    state, reused = prefill_with_prefixes(engine, ef.create_state(engine.config, 3), prompts, store)
    assert reused == [10, 6, 0]  # longest common prefix; row 2 shares nothing
    np.testing.assert_allclose(np.asarray(state.io.logits), full_logits, atol=3e-5)
    np.testing.assert_array_equal(_greedy(engine, state, lengths), full_tokens)


def test_upstream_reuse_of_n_minus_1_keeps_the_cache_in_place(engine):
    warm = ef.prefill(
        engine,
        ef.create_state(engine.config, 2),
        ef.embed(engine, np.array([SYSTEM, SYSTEM])),
        np.array([10, 10]),
    )
    prefix = save_prefix(warm, 1, SYSTEM)
    assert prefix.k[0].shape == (4, 10, 16)
    state = ef.create_state(engine.config, 2)
    before = [x.unsafe_buffer_pointer() for x in state.kv.k + state.kv.v]
    state = restore_prefix(state, 0, prefix)
    assert [x.unsafe_buffer_pointer() for x in state.kv.k + state.kv.v] == before
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [9, 0])
    np.testing.assert_array_equal(
        np.asarray(state.kv.k[1][0, :, :10]), np.asarray(warm.kv.k[1][1, :, :10])
    )


def test_prefix_errors(engine):
    state = ef.prefill(
        engine,
        ef.create_state(engine.config, 1),
        ef.embed(engine, np.array([SYSTEM[:4]])),
        np.array([4]),
    )
    with pytest.raises(
        ef.InputError, match=r"len\(tokens\)=10 \(expected 1..4, the tokens row 0 holds\)"
    ):
        save_prefix(state, 0, SYSTEM)
    with pytest.raises(ef.InputError, match=r"row=3 \(expected 0 <= row < batch=1\)"):
        save_prefix(state, 3, SYSTEM[:2])
    prefix = save_prefix(state, 0, SYSTEM[:4])
    with pytest.raises(ef.InputError, match=r"used=5 \(expected 0..prefix length 4\)"):
        restore_prefix(state, 0, prefix, used=5)


def test_one_restore_executable_serves_every_row(engine):
    from edgellm_fn.runtime import prefix_cache

    warm = ef.prefill(
        engine, ef.create_state(engine.config, 1), ef.embed(engine, np.array([SYSTEM])), [10]
    )
    prefix = save_prefix(warm, 0, SYSTEM)
    state = ef.create_state(engine.config, 3)
    prefix_cache._restore.clear_cache()
    for row in range(3):
        state = restore_prefix(state, row, prefix, used=9 - row)
    assert prefix_cache._restore._cache_size() == 1  # the row is a buffer, not a static
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [9, 8, 7])
    for row in range(3):
        np.testing.assert_array_equal(
            np.asarray(state.kv.v[0][row, :, :10]), np.asarray(warm.kv.v[0][0, :, :10])
        )


def test_prefill_with_prefixes_validates_before_donating(engine):
    store = PrefixStore()
    state = ef.create_state(engine.config, 2)
    prompts = [SYSTEM + [40], [5] * 20]
    with pytest.raises(
        ef.InputError,
        match=r"row 0 reuses 0 tokens and prefills 11 padded to bucket=8 \(expected 11 <= bucket",
    ):
        prefill_with_prefixes(engine, state, prompts, store, bucket=8)
    with pytest.raises(ef.InputError, match=r"len\(prompts\)=3 \(expected the state's batch 2\)"):
        prefill_with_prefixes(engine, state, [*prompts, [1]], store)
    state, reused = prefill_with_prefixes(engine, state, prompts, store)  # state untouched
    assert reused == [0, 0]
    with pytest.raises(ef.InputError, match=r"already donated.*state = prefill_with_prefixes"):
        prefill_with_prefixes(engine, _donated(engine), prompts, store)
    with pytest.raises(ef.InputError, match=r"holds lengths \[11, 20\] \(expected a fresh state"):
        prefill_with_prefixes(engine, state, prompts, store)
    with pytest.raises(ef.InputError, match=r"save_prefix: this state was already donated"):
        save_prefix(_donated(engine), 0, [1])


def _donated(engine):
    state = ef.create_state(engine.config, 2)
    ef.decode(engine, state, np.ones((2,), np.int32))
    return state


def test_out_of_vocabulary_ids_are_refused_by_save_lookup_and_prefill(engine):
    store = PrefixStore(vocab_size=128)
    state = ef.create_state(engine.config, 2)
    state, _ = prefill_with_prefixes(engine, state, [SYSTEM + [40], [5, 6]], store)
    with pytest.raises(
        ef.InputError, match=r"save_prefix: tokens\[3\]=128 \(expected a token id 0..127"
    ):
        save_prefix(state, 0, SYSTEM[:3] + [128])
    store.add(save_prefix(state, 0, SYSTEM))
    with pytest.raises(
        ef.InputError, match=r"PrefixStore.lookup: tokens\[1\]=-4 \(expected a token id"
    ):
        store.lookup([11, -4])
    with pytest.raises(
        ef.InputError, match=r"PrefixStore.lookup: tokens\[0\]=999 \(expected a token id 0..127"
    ):
        store.lookup([999])
    # Row 0 would restore a cached prefix (donating the state) before row 1's ids reach embed:
    # every prompt is checked first, so the fresh state survives the refusal.
    fresh = ef.create_state(engine.config, 2)
    with pytest.raises(
        ef.InputError, match=r"prefill_with_prefixes: prompts\[1\]\[2\]=300 \(expected a token id"
    ):
        prefill_with_prefixes(engine, fresh, [SYSTEM + [41], [5, 6, 300]], store)
    fresh, reused = prefill_with_prefixes(engine, fresh, [SYSTEM + [41], [5, 6, 7]], store)
    assert reused == [10, 0]
