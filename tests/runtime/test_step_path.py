"""The hot path is recompile-free and host-free: request variety compiles nothing after a
warm-up, finished rows are masked in place, and ``decode`` reads nothing back per step."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.generate import generate
from edgellm_fn.runtime.sampling import SamplingConfig, make_sampling_params
from edgellm_fn.text.tokenizer import Tokenizer

from ..helpers import make_engine, pad

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles: list[str] = []
_counting = [False]


def _listener(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == COMPILE_EVENT and _counting[0]:
        _compiles.append(event)


jax.monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def count_compiles():
    """Yields a list that holds one entry per backend compilation inside the block."""
    _compiles.clear()
    _counting[0] = True
    try:
        yield _compiles
    finally:
        _counting[0] = False


@pytest.fixture(scope="module")
def engine(checkpoints):
    return make_engine(checkpoints["llama"], batch=3, max_input_len=16, kv_capacity=48)


@pytest.fixture(scope="module")
def tokenizer(checkpoints):
    return Tokenizer.from_dir(checkpoints["llama"])


PROMPTS = [[5, 9, 13, 7, 22], [40, 41], [3, 4, 5, 6, 7, 8]]
VARIED = [
    dict(max_new_tokens=12, temperature=0.7),
    dict(max_new_tokens=9, top_p=0.8, temperature=1.3),
    dict(max_new_tokens=16, top_k=5, logit_bias=[{7: 3.0}, None, {2: 100.0, 9: -100.0}]),
    dict(max_new_tokens=10, top_k=1, num_logprobs=[0, 3, 50], stop=[["a"], [], ["zz", "\n"]]),
    dict(max_new_tokens=11, temperature=0.0, seed=9, logit_bias=[{i: 1.0 for i in range(40)}] * 3),
]


@pytest.mark.parametrize("loop", ["python", "while"])
def test_request_variety_triggers_no_compilation(engine, tokenizer, loop):
    generate(engine, tokenizer, PROMPTS, max_new_tokens=9, loop=loop)  # warm-up: compiles
    with count_compiles() as compiles:
        outs = [generate(engine, tokenizer, PROMPTS, loop=loop, **kw) for kw in VARIED]
    assert compiles == [], f"{len(compiles)} compilations for varied requests"
    assert all(len(c.tokens) >= 1 for out in outs for c in out)
    assert outs[2][2].tokens[0] == 2 and outs[2][2].finish_reason == "stop"  # forced EOS id 2
    assert len(outs[3][2].logprobs[0]["top_logprobs"]) == 50
    with count_compiles() as control:  # the listener sees compilations: a new batch shape
        generate(engine, tokenizer, PROMPTS[:2], max_new_tokens=9, loop=loop)
    assert control


def test_both_loops_give_identical_tokens_on_varied_requests(engine, tokenizer):
    for kw in VARIED[:3]:
        a = generate(engine, tokenizer, PROMPTS, loop="python", **kw)
        b = generate(engine, tokenizer, PROMPTS, loop="while", **kw)
        assert [c.tokens for c in a] == [c.tokens for c in b]


def _kv_addresses(state) -> list[int]:
    return [x.unsafe_buffer_pointer() for x in (*state.kv.k, *state.kv.v, state.kv.lengths)]


@pytest.mark.parametrize("loop", [loops.decode_python, loops.decode_while])
def test_finished_rows_are_masked_in_place_without_compiling(engine, loop):
    limits = SamplingConfig(max_bias_entries=4)
    ids, lengths = pad(PROMPTS)

    def run(bias):
        config, params = make_sampling_params(
            3, vocab_size=128, top_k=1, logit_bias=bias, config=limits
        )
        state = ef.create_state(engine.config, 3, limits)
        state = ef.prefill(engine, state, ef.embed(engine, ids), lengths)
        before = _kv_addresses(state)
        state, res = loop(
            engine,
            state,
            config,
            params,
            jax.random.PRNGKey(0),
            loops.token_limits(engine, lengths, 12),
            eos_ids=(2,),
            max_new_tokens=12,
        )
        assert _kv_addresses(state) == before
        return np.asarray(state.kv.lengths), jax.device_get(res)

    _, full = run(None)  # warm-up
    with count_compiles() as compiles:
        lengths_a, a = run([None, {2: 100.0}, None])  # row 1 ends at once (EOS)
        lengths_b, b = run([{2: 100.0}, None, {2: 100.0}])  # rows 0 and 2 end at once
    assert compiles == []
    np.testing.assert_array_equal(a.num_tokens, [12, 1, 12])
    np.testing.assert_array_equal(b.num_tokens, [1, 12, 1])
    np.testing.assert_array_equal(a.tokens[[0, 2]], full.tokens[[0, 2]])  # masking is exact
    np.testing.assert_array_equal(b.tokens[1], full.tokens[1])
    # A finished row keeps its length; a running row grows by one per fed-back token.
    np.testing.assert_array_equal(lengths_a, lengths + [11, 0, 11])
    np.testing.assert_array_equal(lengths_b, lengths + [0, 11, 0])


def test_max_new_tokens_in_one_bucket_shares_the_loop(engine):
    ids, lengths = pad(PROMPTS)
    config, params = make_sampling_params(3, vocab_size=128, top_k=1)
    sizes = []
    for n in (9, 16, 13):  # one power-of-two bucket (16)
        state = ef.prefill(
            engine, ef.create_state(engine.config, 3), ef.embed(engine, ids), lengths
        )
        _, res = loops.decode_while(
            engine,
            state,
            config,
            params,
            jax.random.PRNGKey(0),
            loops.token_limits(engine, lengths, n),
            eos_ids=(),
            max_new_tokens=n,
        )
        sizes.append(loops._decode_loop_jit._cache_size())
        assert res.tokens.shape == (3, 16)
        np.testing.assert_array_equal(np.asarray(res.num_tokens), [n] * 3)
    assert sizes[1] == sizes[2] == sizes[0]


def test_decode_does_no_device_to_host_copy_per_step(engine):
    ids, lengths = pad(PROMPTS)
    state = ef.prefill(engine, ef.create_state(engine.config, 3), ef.embed(engine, ids), lengths)
    token = jnp.asarray([1, 2, 3], jnp.int32)
    state = ef.decode(engine, state, token)  # warm-up (compiles)
    with jax.transfer_guard_device_to_host("disallow"):
        for _ in range(10):
            state = ef.decode(engine, state, token)
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), lengths + 11)


def test_decode_still_catches_a_full_cache_without_reading_the_device(engine):
    ids = np.full((3, 16), 4, np.int32)
    state = ef.prefill(
        engine, ef.create_state(engine.config, 3), ef.embed(engine, ids), np.array([16, 16, 16])
    )
    token = jnp.asarray([1, 2, 3], jnp.int32)
    with jax.transfer_guard_device_to_host("disallow"):
        for _ in range(32):
            state = ef.decode(engine, state, token)
        with pytest.raises(ef.InputError, match=r"row 0 holds 48 tokens \(expected < kv capacity"):
            ef.decode(engine, state, token)


def test_loops_on_a_donated_state_name_the_fix(engine):
    ids, lengths = pad(PROMPTS)
    state = ef.prefill(engine, ef.create_state(engine.config, 3), ef.embed(engine, ids), lengths)
    config, params = make_sampling_params(3, vocab_size=128, top_k=1)
    limits = loops.token_limits(engine, lengths, 4)
    loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(), max_new_tokens=4
    )
    for loop, name in (
        (loops.decode_while, "decode_while"),
        (loops.decode_python, "decode_python"),
    ):
        with pytest.raises(
            ef.InputError,
            match=rf"{name}: this state was already donated.*"
            rf"state = {name}\(engine, state",
        ):
            loop(
                engine,
                state,
                config,
                params,
                jax.random.PRNGKey(0),
                limits,
                eos_ids=(),
                max_new_tokens=4,
            )
