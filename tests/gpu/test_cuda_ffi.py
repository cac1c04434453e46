"""CUDA handlers of edgellm_fn.ffi.kv_cache_utils against their references (GPU only)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import ffi

pytestmark = pytest.mark.gpu
DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]


@pytest.fixture(scope="module")
def put():
    if not ffi.cuda_available():
        pytest.fail("edgellm_fn was built without CUDA handlers: rebuild with nvcc on PATH")
    return functools.partial(jax.device_put, device=jax.devices("gpu")[0])


def _random(rng, put, shape, dtype):
    x = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return put(jnp.asarray(x, dtype=dtype))


def _same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


# D=24 rows are 16-byte multiples (vector path); D=5 with odd seq_len is not (scalar path).
SHAPES = [(3, 5, 37, 24, 19), (2, 3, 21, 5, 7), (4, 8, 512, 128, 333)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("b", "h", "cap", "d", "seq_len"), SHAPES)
def test_save_and_instantiate_layer_match_ref(rng, put, dtype, b, h, cap, d, seq_len):
    cache = _random(rng, put, (b, h, cap, d), dtype)
    poison = put(jnp.full((h, seq_len, d), jnp.nan, dtype))
    ptr = poison.unsafe_buffer_pointer()

    @functools.partial(jax.jit, donate_argnums=0, keep_unused=True)
    def save(poison, cache):
        del poison
        return ffi.save_kv_cache_layer(cache, b - 1, seq_len)

    saved = save(poison, cache)
    assert saved.unsafe_buffer_pointer() == ptr
    _same(saved, ffi.save_kv_cache_layer_ref(cache, b - 1, seq_len))

    src = _random(rng, put, (h, seq_len, d), dtype)
    want = ffi.instantiate_kv_cache_layer_ref(cache, src, 0)
    cache_ptr = cache.unsafe_buffer_pointer()
    inst = jax.jit(ffi.instantiate_kv_cache_layer, static_argnums=2, donate_argnums=0)
    got = inst(cache, src, 0)
    assert got.unsafe_buffer_pointer() == cache_ptr
    _same(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_match_ref_with_differing_heads(rng, put, dtype):
    heads, caps = (8, 2, 5, 1, 8), (64, 70, 64, 33, 64)
    layers = [_random(rng, put, (3, h, c, 16), dtype) for h, c in zip(heads, caps, strict=True)]
    poisons = [put(jnp.full((h, 31, 16), jnp.nan, dtype)) for h in heads]

    @functools.partial(jax.jit, donate_argnums=0, keep_unused=True)
    def save(poisons, layers):
        del poisons
        return ffi.save_kv_cache_batched(layers, 2, 31)

    saved = save(poisons, layers)
    for got, want in zip(saved, ffi.save_kv_cache_batched_ref(layers, 2, 31), strict=True):
        _same(got, want)
    src = [_random(rng, put, s.shape, dtype) for s in saved]
    want = ffi.instantiate_kv_cache_batched_ref(layers, src, 1)
    ptrs = [x.unsafe_buffer_pointer() for x in layers]
    inst = jax.jit(ffi.instantiate_kv_cache_batched, static_argnums=2, donate_argnums=0)
    got = inst(layers, src, 1)
    assert [g.unsafe_buffer_pointer() for g in got] == ptrs
    for g, w in zip(got, want, strict=True):
        _same(g, w)


def test_batched_many_layers_in_one_launch(rng, put, record_property):
    n = ffi.MAX_BATCHED_LAYERS
    layers = [_random(rng, put, (2, 1 + i % 4, 40, 8), jnp.bfloat16) for i in range(n)]
    saved = jax.jit(ffi.save_kv_cache_batched, static_argnums=(1, 2))(layers, 1, 40)
    for got, want in zip(saved, ffi.save_kv_cache_batched_ref(layers, 1, 40), strict=True):
        _same(got, want)
    record_property("layers_per_launch", n)


@pytest.mark.parametrize("per_row", [False, True])
def test_increment_lengths_matches_ref_in_place(rng, put, per_row):
    lengths = put(jnp.asarray(rng.randint(0, 1000, 1001), jnp.int32))
    inc = put(jnp.asarray(rng.randint(1, 9, 1001), jnp.int32)) if per_row else 3
    want = ffi.increment_lengths_ref(lengths, inc)
    ptr = lengths.unsafe_buffer_pointer()
    fn = jax.jit(ffi.increment_lengths, static_argnums=() if per_row else 1, donate_argnums=0)
    got = fn(lengths, inc)
    assert got.unsafe_buffer_pointer() == ptr
    _same(got, want)


def test_handlers_in_a_jitted_decode_loop(rng, put, record_property):
    """fori_loop: copy row 0 (+1) into row 1 of every layer and advance lengths, 7 times."""
    layers = [_random(rng, put, (3, h, 48, 16), jnp.float32) for h in (4, 2, 4, 2)]
    lengths = put(jnp.asarray([5, 9, 13], jnp.int32))
    per_row = put(jnp.asarray([1, 2, 3], jnp.int32))

    def make(save, inst, inc):
        def body(i, carry):
            layers, lengths = carry
            saved = save(layers, 1, 20)
            layers = inst(layers, [s + 1.0 for s in saved], 1)
            return layers, inc(inc(lengths, 1), per_row)

        @functools.partial(jax.jit, donate_argnums=0)
        def run(carry):
            return jax.lax.fori_loop(0, 7, body, carry)

        return run

    want = make(
        ffi.save_kv_cache_batched_ref, ffi.instantiate_kv_cache_batched_ref,
        ffi.increment_lengths_ref,
    )(([jnp.array(x, copy=True) for x in layers], jnp.array(lengths, copy=True)))  # fmt: skip
    ptrs = [x.unsafe_buffer_pointer() for x in layers]
    run = make(ffi.save_kv_cache_batched, ffi.instantiate_kv_cache_batched, ffi.increment_lengths)
    got_layers, got_lengths = run((layers, lengths))
    for g, w in zip(got_layers, want[0], strict=True):
        _same(g, w)
    _same(got_lengths, want[1])
    np.testing.assert_array_equal(np.asarray(got_lengths), [5 + 14, 9 + 21, 13 + 28])
    record_property("loop_pointers_stable", [g.unsafe_buffer_pointer() for g in got_layers] == ptrs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_traced_row_one_executable_for_every_row_and_out_of_range_copies_nothing(rng, put, dtype):
    layers = [_random(rng, put, (3, h, 40, 16), dtype) for h in (4, 2)]
    saved = [_random(rng, put, (h, 9, 16), dtype) for h in (4, 2)]
    save = jax.jit(lambda ls, r: ffi.save_kv_cache_batched(ls, r, 9))
    inst = jax.jit(lambda ls, s, r: ffi.instantiate_kv_cache_batched(ls, s, r))
    for row in range(3):
        r = put(jnp.int32(row))  # the row is a device buffer the kernel reads
        for got, x in zip(save(layers, r), layers, strict=True):
            _same(got, x[row, :, :9])
        for got, want in zip(
            inst(layers, saved, r),
            ffi.instantiate_kv_cache_batched_ref(layers, saved, row),
            strict=True,
        ):
            _same(got, want)
    assert save._cache_size() == inst._cache_size() == 1
    for got, x in zip(inst(layers, saved, put(jnp.int32(3))), layers, strict=True):
        _same(got, x)  # a traced row out of range: the kernel guard copies nothing
