"""The KV commit handler equals its pure-JAX twin and updates every cache in place."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn.ffi import commit_kv, commit_kv_ref
from edgellm_fn.ffi.kv_commit import commit_kv_ffi


def _inputs(rng, dtype, heads=(2, 3), b=3, cap=16, d=8, a=4):
    caches = tuple(
        jnp.asarray(rng.randn(b, h, cap, d).astype(np.float32), dtype) for h in heads for _ in "kv"
    )
    # Buffers XLA owns (an array made from numpy may share the host memory: not donatable).
    caches = jax.jit(lambda c: tuple(x + 0 for x in c))(caches)
    start = jnp.asarray([1, 9, 14], jnp.int32)  # row 2: slots past the capacity are dropped
    path = jnp.asarray([[0, 1, 4, 6], [0, 3, 4, 5], [0, 1, 2, 3]], jnp.int32)
    n = jnp.asarray([4, 3, 4], jnp.int32)
    return caches, start, path, n


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_handler_equals_ref_on_random_data(rng, dtype):
    caches, start, path, n = _inputs(rng, dtype)
    want = jax.jit(commit_kv_ref)(caches, start, path, n)
    got = jax.jit(commit_kv_ffi)(caches, start, path, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    assert any(
        not np.array_equal(np.asarray(g, np.float32), np.asarray(c, np.float32))
        for g, c in zip(got, caches, strict=True)
    )  # something really moved


def test_unaliased_outputs_start_from_the_input_not_garbage(rng):
    # Without donation XLA gives the handler fresh (poisoned) result buffers: it copies first.
    caches, start, path, n = _inputs(rng, jnp.float32)
    poisoned = jax.jit(lambda c: tuple(x * 0 + jnp.nan for x in c))(caches)
    del poisoned
    got = jax.jit(commit_kv_ffi)(caches, start, path, jnp.zeros(3, jnp.int32))
    for g, c in zip(got, caches, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(c))


def test_handler_aliases_and_keeps_donated_buffers(rng):
    caches, start, path, n = _inputs(rng, jnp.float32)
    fn = jax.jit(commit_kv, donate_argnums=(0,))
    text = fn.lower(caches, start, path, n).as_text()
    assert "edgellm_commit_kv" in text and "output_operand_aliases" in text
    before = [c.unsafe_buffer_pointer() for c in caches]
    want = commit_kv_ref(caches, start, path, n)
    got = fn(caches, start, path, n)
    assert [c.unsafe_buffer_pointer() for c in got] == before
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_vmap_runs_rows_of_a_leading_axis_sequentially(rng):
    caches, start, path, n = _inputs(rng, jnp.float32)
    stacked = tuple(jnp.stack([c, c * 2]) for c in caches)
    got = jax.vmap(commit_kv_ffi, in_axes=(0, None, None, None))(stacked, start, path, n)
    want = jax.vmap(commit_kv_ref, in_axes=(0, None, None, None))(stacked, start, path, n)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_bad_index_arrays_are_refused_by_name(rng):
    caches, start, path, n = _inputs(rng, jnp.float32)
    with pytest.raises(
        ValueError, match=r"commit_kv: path is int32\[3\] \(expected int32 \[3, 'A'\]\)"
    ):
        commit_kv(caches, start, start, n)
    with pytest.raises(ValueError, match=r"commit_kv: caches\[1\] is float32\[2, 16, 8\]"):
        commit_kv((caches[0], caches[1][0]), start, path, n)
