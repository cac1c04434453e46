"""The two decode loops agree token for token; finished rows are compacted away correctly."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.sampling import make_sampling_params

from ..helpers import make_engine, pad


def _prefilled(engine, prompts):
    ids, lengths = pad(prompts)
    state = ef.create_state(engine.config, len(prompts))
    return ef.prefill(engine, state, ef.embed(engine, ids), lengths), lengths


@pytest.fixture(scope="module")
def engine(checkpoints):
    return make_engine(checkpoints["llama"], batch=3, max_input_len=16, kv_capacity=40)


@pytest.mark.parametrize("sampling", [dict(top_k=1), dict(temperature=0.9, top_p=0.9)])
def test_while_loop_equals_python_loop(engine, sampling):
    prompts = [[5, 9, 13, 7, 22], [40, 41], [3] * 11]
    eos = (2, 77)
    b = len(prompts)
    config, params = make_sampling_params(b, vocab_size=128, num_logprobs=3, **sampling)
    key = jax.random.PRNGKey(7)
    state, lengths = _prefilled(engine, prompts)
    limits = loops.token_limits(engine, lengths, 24)
    _, fast = loops.decode_while(
        engine, state, config, params, key, limits, eos_ids=eos, max_new_tokens=24
    )
    streamed = []
    state, _ = _prefilled(engine, prompts)
    _, slow = loops.decode_python(
        engine,
        state,
        config,
        params,
        key,
        limits,
        eos_ids=eos,
        max_new_tokens=24,
        on_token=lambda r, t: streamed.append((r, t)),
    )
    fast = jax.device_get(fast)
    np.testing.assert_array_equal(fast.tokens, slow.tokens)
    np.testing.assert_array_equal(fast.num_tokens, slow.num_tokens)
    np.testing.assert_array_equal(fast.hit_eos, slow.hit_eos)
    np.testing.assert_allclose(fast.top_logprobs, slow.top_logprobs, atol=1e-5)
    assert len(streamed) == int(slow.num_tokens.sum())
    assert slow.num_tokens.min() >= 1


def test_compacted_rows_continue_exactly(engine):
    """Row 1 is forced to EOS at once; rows 0 and 2 must match a batch where nobody stops."""
    prompts = [[5, 9, 13], [40, 41, 42, 43], [7] * 6]
    key = jax.random.PRNGKey(0)
    bias = [None, {2: 100.0}, None]
    config, params = make_sampling_params(3, vocab_size=128, top_k=1, logit_bias=bias)
    state, lengths = _prefilled(engine, prompts)
    limits = loops.token_limits(engine, lengths, 12)
    _, res = loops.decode_python(
        engine, state, config, params, key, limits, eos_ids=(2,), max_new_tokens=12
    )
    assert res.num_tokens[1] == 1 and res.hit_eos[1]
    config, params = make_sampling_params(3, vocab_size=128, top_k=1)
    state, _ = _prefilled(engine, prompts)
    _, ref = loops.decode_python(
        engine, state, config, params, key, limits, eos_ids=(), max_new_tokens=12
    )
    for row in (0, 2):
        n = int(res.num_tokens[row])
        np.testing.assert_array_equal(res.tokens[row, :n], ref.tokens[row, :n])


def test_generation_is_clamped_to_kv_capacity(engine):
    prompts = [[5] * 16, [6] * 3]
    limits = loops.token_limits(engine, [16, 3], 100)
    np.testing.assert_array_equal(limits, [25, 38])  # capacity 40: 40 - len + 1
    config, params = make_sampling_params(2, vocab_size=128, top_k=1)
    state, _ = _prefilled(engine, prompts)
    state, res = loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(), max_new_tokens=100
    )
    np.testing.assert_array_equal(np.asarray(res.num_tokens), [25, 38])
    assert int(np.asarray(state.kv.lengths).max()) <= 40
    state, _ = _prefilled(engine, prompts)
    with pytest.raises(
        ef.InputError,
        match=r"row 0 holds 16 tokens and may generate 30 \(expected <= kv capacity=40",
    ):
        loops.decode_python(
            engine,
            state,
            config,
            params,
            jax.random.PRNGKey(0),
            [30, 30],
            eos_ids=(),
            max_new_tokens=30,
        )
