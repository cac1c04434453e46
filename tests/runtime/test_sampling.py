"""Tests for edgellm_fn.runtime.sampling: filters, draws, logprobs, jit/while_loop, validation."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn.errors import InputError
from edgellm_fn.runtime.sampling import (
    SampleOutput,
    SamplingConfig,
    SamplingParams,
    filter_logits,
    make_sampling_params,
    sample,
)

B, V = 4, 64
DRAWS = 400


@pytest.fixture(autouse=True)
def _strict_numerics():
    with jax.numpy_dtype_promotion("strict"), jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture
def logits():
    return jnp.asarray(np.random.default_rng(0).normal(size=(B, V)).astype(np.float32) * 2)


sample_jit = jax.jit(sample, static_argnums=0)
filter_jit = jax.jit(filter_logits, static_argnums=0)


@jax.jit(static_argnums=0)
def _draw(config, params, logits, keys):
    return jax.vmap(lambda k: sample(config, params, logits, jax.random.split(k, B)).tokens)(keys)


def draw_many(config, params, logits, seed=0):
    """Tokens ``[DRAWS, B]`` from fresh keys, in one jitted vmap, compiled once per config."""
    return np.asarray(_draw(config, params, logits, jax.random.split(jax.random.key(seed), DRAWS)))


def top_p_reference(logits, temperature, top_p, top_k):
    """Numpy mask ``[B, V]`` of the ids kept by temperature -> top-k -> top-p."""
    scaled = np.asarray(logits, np.float64) / np.asarray(temperature, np.float64)[:, None]
    keep = np.zeros(scaled.shape, bool)
    for b in range(scaled.shape[0]):
        order = np.argsort(-scaled[b], kind="stable")
        if top_k:
            order = order[:top_k]
        probs = np.exp(scaled[b, order] - scaled[b, order].max())
        probs /= probs.sum()
        n = int(np.searchsorted(np.cumsum(probs), top_p[b])) + 1  # smallest prefix with mass >= p
        keep[b, order[:n]] = True
    return keep


@pytest.mark.parametrize("k", [2, 5])
def test_top_k_draws_only_the_k_best_ids(logits, k):
    config, params = make_sampling_params(B, vocab_size=V, top_k=k, temperature=2.0)
    tokens = draw_many(config, params, logits)
    best = np.argsort(-np.asarray(logits), axis=1)[:, :k]
    for b in range(B):
        assert set(tokens[:, b].tolist()) == set(best[b].tolist())


@pytest.mark.parametrize("top_k", [0, 10])
def test_top_p_keeps_smallest_set_with_mass_at_least_p(logits, top_k):
    top_p = [0.3, 0.6, 0.9, 0.99]
    temperature = [0.7, 1.0, 1.5, 1.0]
    config, params = make_sampling_params(
        B, vocab_size=V, top_p=top_p, top_k=top_k, temperature=temperature
    )
    assert config == SamplingConfig()  # top_p / top_k are values, not a derived flag
    kept = np.isfinite(np.asarray(filter_jit(config, params, logits)))
    np.testing.assert_array_equal(kept, top_p_reference(logits, temperature, top_p, top_k))
    tokens = draw_many(config, params, logits)
    for b in range(B):
        assert set(tokens[:, b].tolist()) <= set(np.flatnonzero(kept[b]).tolist())


def test_no_filter_keeps_every_id(logits):
    config, params = make_sampling_params(B, vocab_size=V)
    assert config == SamplingConfig()
    assert np.isfinite(np.asarray(filter_jit(config, params, logits))).all()


@pytest.mark.parametrize(("temperature", "top_k"), [(0.0, 0), (1e-4, 0), (1e-4, 10), (1.0, 1)])
def test_zero_temperature_or_top_k_1_is_argmax(logits, temperature, top_k):
    config, params = make_sampling_params(
        B, vocab_size=V, temperature=temperature, top_k=top_k, top_p=0.9
    )
    tokens = draw_many(config, params, logits)
    np.testing.assert_array_equal(
        tokens, np.broadcast_to(np.argmax(np.asarray(logits), axis=1), tokens.shape)
    )


def test_greedy_is_per_row(logits):
    config, params = make_sampling_params(B, vocab_size=V, temperature=[0.0, 5.0, 0.0, 5.0])
    tokens = draw_many(config, params, logits)
    argmax = np.argmax(np.asarray(logits), axis=1)
    assert (tokens[:, [0, 2]] == argmax[[0, 2]]).all()
    assert len(set(tokens[:, 1].tolist())) > 5 and len(set(tokens[:, 3].tolist())) > 5


def test_bias_minus_100_bans_and_plus_100_forces(logits):
    argmax = np.argmax(np.asarray(logits), axis=1)
    worst = np.argmin(np.asarray(logits), axis=1)
    ban = [{int(argmax[0]): -100.0}, {int(argmax[1]): -100}, None, None]
    force = [None, None, {int(worst[2]): 100.0}, {str(worst[3]): 100.0}]  # JSON-style key too
    bias = [b or f for b, f in zip(ban, force, strict=True)]
    config, params = make_sampling_params(B, vocab_size=V, temperature=1.0, logit_bias=bias)
    assert config.max_bias_entries == 1
    tokens = draw_many(config, params, logits)
    assert not (tokens[:, 0] == argmax[0]).any() and not (tokens[:, 1] == argmax[1]).any()
    assert (tokens[:, 2] == worst[2]).all() and (tokens[:, 3] == worst[3]).all()
    greedy_params = SamplingParams(**{**params.__dict__, "top_k": jnp.ones((B,), jnp.int32)})
    greedy = sample_jit(
        config, greedy_params, logits, jax.random.split(jax.random.key(0), B)
    ).tokens
    second = np.argsort(-np.asarray(logits), axis=1)[:, 1]
    np.testing.assert_array_equal(greedy, [second[0], second[1], worst[2], worst[3]])


def test_same_key_same_tokens_different_keys_differ(logits):
    config, params = make_sampling_params(B, vocab_size=V, temperature=1.0, top_p=0.95, top_k=10)
    keys = jax.random.split(jax.random.key(7), B)
    first = sample_jit(config, params, logits, keys).tokens
    again = sample_jit(config, params, logits, keys).tokens
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(
        draw_many(config, params, logits, seed=1), draw_many(config, params, logits, seed=1)
    )
    assert (
        draw_many(config, params, logits, seed=1) != draw_many(config, params, logits, seed=2)
    ).any()


def test_while_loop_equals_python_loop_and_params_do_not_recompile(logits):
    config, params = make_sampling_params(B, vocab_size=V, top_k=8, top_p=0.9, logit_bias={3: 2.0})
    step = jax.jit(sample, static_argnums=0)  # a fresh cache to count compilations
    key, steps = jax.random.key(3), 6

    def body(carry):
        i, x, out = carry
        tokens = sample(config, params, x, jax.random.split(jax.random.fold_in(key, i), B)).tokens
        x = x.at[jnp.arange(B), tokens].add(-1.0)  # feedback so each step sees new logits
        return i + 1, x, out.at[i].set(tokens)

    init = (jnp.int32(0), logits, jnp.zeros((steps, B), jnp.int32))
    _, _, looped = jax.jit(lambda c: jax.lax.while_loop(lambda c: c[0] < steps, body, c))(init)
    x, expected = logits, []
    for i in range(steps):
        tokens = step(config, params, x, jax.random.split(jax.random.fold_in(key, i), B)).tokens
        x = x.at[jnp.arange(B), tokens].add(-1.0)
        expected.append(tokens)
    np.testing.assert_array_equal(looped, np.stack(expected))
    compiled = step._cache_size()
    for top_k, top_p in ((8, [0.5, 0.6, 0.7, 0.8]), ([0, 1, 3, 64], 1.0)):
        _, other = make_sampling_params(
            B, vocab_size=V, top_k=top_k, top_p=top_p, temperature=0.3, logit_bias={9: -5}
        )
        step(config, other, logits, jax.random.split(key, B))
    assert step._cache_size() == compiled


@pytest.mark.parametrize(("num_logprobs", "top_k"), [(0, 0), (5, 1), (50, 10)])
def test_logprobs_are_log_softmax_of_biased_logits(logits, num_logprobs, top_k):
    bias = {5: 3.0, 7: -2.0}
    config, params = make_sampling_params(
        B, vocab_size=V, num_logprobs=num_logprobs, top_k=top_k, logit_bias=bias, top_p=0.8
    )
    out = sample_jit(config, params, logits, jax.random.split(jax.random.key(0), B))
    assert isinstance(out, SampleOutput) and out.tokens.dtype == jnp.int32
    ref = np.asarray(jax.nn.log_softmax(logits.at[:, 5].add(3.0).at[:, 7].add(-2.0), axis=-1))
    assert out.top_ids.shape == out.top_logprobs.shape == (B, num_logprobs)
    order = np.argsort(-ref, axis=1)[:, :num_logprobs]
    np.testing.assert_array_equal(out.top_ids, order)
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(ref, order, 1), rtol=1e-5)
    picked = np.take_along_axis(ref, np.asarray(out.tokens)[:, None], 1)[:, 0]
    np.testing.assert_allclose(out.token_logprobs, picked, rtol=1e-5)


def test_config_is_hashable_static_arg():
    a, _ = make_sampling_params(2, vocab_size=V, top_k=3, top_p=0.5, num_logprobs=2)
    b = SamplingConfig(max_num_logprobs=2)
    assert a == b and hash(a) == hash(b)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"logit_bias": [{}, {5003: 150.0}]},
            "logit_bias[1][5003]=150.0 (expected |value| <= 100)",
        ),
        ({"logit_bias": {1: float("nan")}}, "logit_bias[0][1]=nan (expected |value| <= 100)"),
        ({"logit_bias": {9000: 1.0}}, "logit_bias[0] id=9000 (expected 0 <= id < vocab_size=8000)"),
        ({"logit_bias": {-1: 1.0}}, "logit_bias[0] id=-1 (expected 0 <= id"),
        ({"logit_bias": {"x": 1.0}}, "logit_bias[0] key='x' (expected an int token id)"),
        ({"logit_bias": {3: 1.0, "3": 2.0}}, "logit_bias[0] id=3 (expected each id once)"),
        (
            {"logit_bias": {i: 1.0 for i in range(1025)}},
            "len(logit_bias[0])=1025 (expected <= 1024",
        ),
        ({"logit_bias": [{1: 1.0}] * 3}, "len(logit_bias)=3 (expected batch_size=2)"),
        ({"logit_bias": {1: 1.0, 2: 1.0}, "max_bias_entries": 1}, "raise max_bias_entries"),
        ({"max_bias_entries": 2000}, r"max_bias_entries=2000 (expected an int in [0, 1024])"),
        ({"top_p": 0.0}, "top_p[0]=0.0 (expected 0 < top_p <= 1)"),
        ({"top_p": [1.0, 1.5]}, "top_p[1]=1.5 (expected 0 < top_p <= 1)"),
        ({"top_p": [0.5]}, "len(top_p)=1 (expected batch_size=2)"),
        ({"temperature": -0.5}, "temperature[0]=-0.5 (expected >= 0); use 0 for greedy"),
        ({"temperature": float("inf")}, "temperature[0]=inf (expected >= 0)"),
        ({"num_logprobs": 51}, r"num_logprobs=51 (expected an int in [0, 50])"),
        ({"top_k": -1}, "top_k=-1 (expected an int >= 0)"),
        ({"top_k": 2.5}, "top_k=2.5 (expected an int >= 0)"),
    ],
)
def test_make_sampling_params_rejects(kwargs, match):
    with pytest.raises(InputError, match=re.escape(match)):
        make_sampling_params(2, vocab_size=8000, **kwargs)


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize(
    ("field", "match"),
    [
        ("temperature", r"params.temperature.shape=(3,) (expected (4,)"),
        ("bias_ids", r"params.bias_ids.shape=(3, 0) (expected (4, 0)"),
    ],
)
def test_sample_rejects_mismatched_shapes(logits, field, match):
    _, params = make_sampling_params(B, vocab_size=V)
    bad = SamplingParams(**{**params.__dict__, field: getattr(params, field)[:3]})
    with pytest.raises(InputError, match=re.escape(match)):
        sample(SamplingConfig(), bad, logits, jax.random.split(jax.random.key(0), B))


def test_sample_rejects_wrong_key_count(logits):
    _, params = make_sampling_params(B, vocab_size=V)
    with pytest.raises(InputError, match=re.escape("keys.shape=(2,) (expected leading dim B=4)")):
        sample(SamplingConfig(), params, logits, jax.random.split(jax.random.key(0), 2))


def test_config_rejects_bad_values():
    with pytest.raises(
        InputError, match=re.escape("SamplingConfig: max_top_k=-1 (expected an int >= 0)")
    ):
        SamplingConfig(max_top_k=-1)
    with pytest.raises(
        InputError, match=re.escape("SamplingConfig: max_num_logprobs=51 (expected an int in")
    ):
        SamplingConfig(max_num_logprobs=51)


def test_per_row_top_k_values_within_a_candidate_limit(logits):
    limits = SamplingConfig(max_top_k=8)
    config, params = make_sampling_params(
        B, vocab_size=V, top_k=[1, 2, 0, 5], temperature=2.0, config=limits
    )
    assert config is limits
    tokens = draw_many(config, params, logits)
    order = np.argsort(-np.asarray(logits), axis=1)
    for b, k in enumerate([1, 2, 8, 5]):  # top_k=0 means the whole candidate set (8)
        assert set(tokens[:, b].tolist()) == set(order[b, :k].tolist())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_k": 9}, "top_k=9 (expected <= config.max_top_k=8); raise the engine's max_top_k"),
        ({"num_logprobs": [0, 3]}, "num_logprobs=3 (expected <= config.max_num_logprobs=2)"),
        ({"logit_bias": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 1.0}}, "row of 5 ids (expected <= "),
        ({"max_bias_entries": 8}, "max_bias_entries=8 (expected config.max_bias_entries=4"),
    ],
)
def test_values_beyond_the_fixed_limits_are_rejected(kwargs, match):
    limits = SamplingConfig(max_top_k=8, max_num_logprobs=2, max_bias_entries=4)
    with pytest.raises(InputError, match=re.escape(match)):
        make_sampling_params(2, vocab_size=V, config=limits, **kwargs)
