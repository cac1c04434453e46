"""Functional-state invariants: fixed buffer addresses, no cache copies, one trace per shape."""

from __future__ import annotations

import re

import chex
import jax
import numpy as np

import edgellm_fn as ef
from edgellm_fn.runtime import steps

from ..helpers import make_engine


def _addresses(state) -> list[int]:
    return [leaf.unsafe_buffer_pointer() for leaf in jax.tree_util.tree_leaves(state)]


def test_every_leaf_keeps_its_address_over_20_decode_steps(checkpoints):
    engine = make_engine(checkpoints["llama"])
    state = ef.create_state(engine.config, 2)
    ids = np.array([[5, 6, 7], [8, 9, 0]], np.int32)
    state = ef.prefill(engine, state, ef.embed(engine, ids), np.array([3, 2]))
    before = _addresses(state)
    assert len(set(before)) == len(before), "two state leaves share a buffer"
    shapes = jax.eval_shape(lambda s: s, state)
    token = np.array([[1], [2]], np.int32)
    for _ in range(20):
        new = ef.decode(engine, state, ef.embed(engine, token))
        chex.assert_trees_all_equal_shapes_and_dtypes(new, shapes)
        assert _addresses(new) == before
        state = new
    np.testing.assert_array_equal(np.asarray(state.kv.lengths), [23, 22])


def test_compiled_decode_aliases_every_state_buffer_and_copies_no_cache(checkpoints):
    engine = make_engine(checkpoints["qwen3"])
    state = ef.create_state(engine.config, 2)
    x = ef.embed(engine, np.zeros((2, 1), np.int32))
    compiled = steps.decode_jit.lower(engine, state, x).compile()
    hlo = compiled.as_text()
    n_state = len(jax.tree_util.tree_leaves(state))
    n_params = len(jax.tree_util.tree_leaves(engine))
    # Every state leaf (after the params) is aliased to an output in the entry computation.
    aliased = {int(param) for _, param in re.findall(r"\{(\d+)\}: \((\d+), \{\}", hlo)}
    assert set(range(n_params, n_params + n_state)) <= aliased, hlo[:2000]
    # No instruction copies a cache slab: the KV writes are in-place scatters into the donated
    # parameters, and every state byte is aliased.
    slab = "{}[{}]".format(
        state.kv.k[0].dtype.name.replace("float", "f"), ",".join(map(str, state.kv.k[0].shape))
    )
    assert not [line for line in hlo.splitlines() if slab in line and " copy(" in line]
    mem = compiled.memory_analysis()
    state_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    assert mem.alias_size_in_bytes >= state_bytes
    assert mem.temp_size_in_bytes < sum(x.nbytes for x in state.kv.k + state.kv.v)


def test_one_trace_per_profile_and_batch_shape(checkpoints):
    engine = make_engine(checkpoints["qwen2"])
    steps.decode_jit.clear_cache()
    steps.prefill_jit.clear_cache()
    for batch in (1, 2):
        for prompt_len in (4, 4, 4):
            state = ef.create_state(engine.config, batch)
            ids = np.full((batch, prompt_len), 7, np.int32)
            state = ef.prefill(engine, state, ef.embed(engine, ids), np.full(batch, prompt_len))
            for _ in range(3):
                state = ef.decode(engine, state, ef.embed(engine, ids[:, :1]))
    assert steps.prefill_jit._cache_size() == 2
    assert steps.decode_jit._cache_size() == 2


def test_chex_sees_one_decode_trace_per_batch_shape(checkpoints):
    engine = make_engine(checkpoints["llama"])
    chex.clear_trace_counter()
    # Two batch shapes, five steps each: exactly two traces, else chex raises.
    traced = jax.jit(chex.assert_max_traces(steps.decode_step, n=2), donate_argnums=1)
    for batch in (1, 3):
        state = ef.create_state(engine.config, batch)
        x = ef.embed(engine, np.ones((batch, 1), np.int32))
        for _ in range(5):
            state = traced(engine, state, x)
        np.testing.assert_array_equal(np.asarray(state.kv.lengths), [5] * batch)
