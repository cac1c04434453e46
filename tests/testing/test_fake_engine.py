"""The fake engine does exactly the arithmetic its docstring states, through the real runtime."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.errors import ConfigError
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.sampling import make_sampling_params
from edgellm_fn.testing.fake_engine import FakeEngine, fake_config

from ..helpers import greedy, pad


@pytest.fixture(scope="module")
def engine() -> FakeEngine:
    return FakeEngine(fake_config(vocab_size=16, kv_capacity=16))


def test_greedy_counts_up_from_the_last_prompt_token(engine):
    tokens = greedy(engine, [[3, 4, 5], [14]], steps=3)["tokens"]
    np.testing.assert_array_equal(tokens, [[6, 7, 8, 9], [15, 0, 1, 2]])  # mod V = 16


def test_kv_slots_hold_the_fed_tokens_and_their_positions(engine):
    ids, lengths = pad([[3, 4, 5], [9]])
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    state = ef.decode(engine, state, ef.embed(engine, np.array([[6], [10]])))
    k, v = np.asarray(state.kv.k[0])[:, 0, :, 0], np.asarray(state.kv.v[0])[:, 0, :, 0]
    np.testing.assert_array_equal(k[0, :5], [3, 4, 5, 6, 0])
    np.testing.assert_array_equal(k[1, :3], [9, 10, 0])  # padding past the row's length: unwritten
    np.testing.assert_array_equal(v[0, :5], [0, 1, 2, 3, 0])
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [4, 2])
    assert k[:, 5:].sum() == 0 and v[:, 5:].sum() == 0


def test_while_loop_stops_at_eos_and_at_the_token_limit(engine):
    ids, lengths = pad([[1, 2], [10, 11, 12]])
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
    config, params = make_sampling_params(2, vocab_size=16, top_k=1)
    limits = loops.token_limits(engine, lengths, 5)
    _, res = loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(5,), max_new_tokens=5
    )
    res = jax.device_get(res)
    np.testing.assert_array_equal(res.num_tokens, [3, 5])  # row 0 reaches EOS 5 after 3, 4
    np.testing.assert_array_equal(res.tokens[0, :3], [3, 4, 5])
    np.testing.assert_array_equal(res.tokens[1, :5], [13, 14, 15, 0, 1])
    assert np.all(res.tokens[:, 5:] == loops.PAD)  # the result width is the step bucket
    np.testing.assert_array_equal(res.hit_eos, [True, False])


def test_bad_fake_config_names_the_field():
    with pytest.raises(
        ConfigError, match=r"fake_config: vocab_size=0 \(expected an integer >= 1\)"
    ):
        fake_config(vocab_size=0)
