"""CPU handlers of edgellm_fn.ffi.kv_cache_utils against their pure-JAX references."""

from __future__ import annotations

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import ffi
from edgellm_fn.ffi import kv_cache_utils as kv

DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
B, HKV, CAP, D = 3, 5, 37, 24  # odd sizes on purpose


def _random(rng: np.random.RandomState, shape, dtype) -> jax.Array:
    # Never zeros: a kernel that writes nothing cannot match.
    x = rng.uniform(0.5, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)
    return jnp.asarray(x, dtype=dtype)


def _poison(shape, dtype) -> jax.Array:
    return jnp.full(shape, jnp.nan, dtype=dtype)


def _assert_same(a: jax.Array, b: jax.Array) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def _donating_save(fn):
    """jit(fn) whose result is written into a donated NaN buffer (proves every element is set)."""

    @functools.partial(jax.jit, donate_argnums=0, static_argnums=(2, 3), keep_unused=True)
    def run(poison, cache, batch_idx, seq_len):
        del poison
        return fn(cache, batch_idx, seq_len)

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch_idx", "seq_len"), [(0, 1), (1, 20), (2, CAP)])
def test_save_layer_matches_ref_into_poisoned_output(rng, dtype, batch_idx, seq_len):
    cache = _random(rng, (B, HKV, CAP, D), dtype)
    poison = _poison((HKV, seq_len, D), dtype)
    ptr = poison.unsafe_buffer_pointer()
    got = _donating_save(ffi.save_kv_cache_layer)(poison, cache, batch_idx, seq_len)
    assert got.unsafe_buffer_pointer() == ptr  # the handler wrote into the NaN buffer
    _assert_same(got, ffi.save_kv_cache_layer_ref(cache, batch_idx, seq_len))
    _assert_same(got, cache[batch_idx, :, :seq_len, :])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch_idx", "seq_len"), [(0, 1), (2, 19), (1, CAP)])
def test_instantiate_layer_matches_ref(rng, dtype, batch_idx, seq_len):
    cache = _random(rng, (B, HKV, CAP, D), dtype)
    saved = _random(rng, (HKV, seq_len, D), dtype)
    want = ffi.instantiate_kv_cache_layer_ref(cache, saved, batch_idx)
    got = jax.jit(ffi.instantiate_kv_cache_layer, static_argnums=2)(cache, saved, batch_idx)
    _assert_same(got, want)
    _assert_same(got[batch_idx, :, :seq_len], saved)
    untouched = np.ones(cache.shape, bool)
    untouched[batch_idx, :, :seq_len] = False
    np.testing.assert_array_equal(np.asarray(got)[untouched], np.asarray(cache)[untouched])


def test_instantiate_keeps_cache_buffer_under_donation(rng):
    cache = _random(rng, (B, HKV, CAP, D), jnp.bfloat16)
    saved = _random(rng, (HKV, 11, D), jnp.bfloat16)
    want = ffi.instantiate_kv_cache_layer_ref(cache, saved, 1)
    ptr = cache.unsafe_buffer_pointer()
    step = jax.jit(ffi.instantiate_kv_cache_layer, static_argnums=2, donate_argnums=0)
    got = step(cache, saved, 1)
    assert got.unsafe_buffer_pointer() == ptr
    assert cache.is_deleted()
    _assert_same(got, want)


def test_instantiate_lowering_declares_output_operand_aliases(rng):
    cache = _random(rng, (B, HKV, CAP, D), jnp.float32)
    saved = _random(rng, (HKV, 4, D), jnp.float32)
    lengths = jnp.arange(B, dtype=jnp.int32)
    cases = [
        (lambda c, s: ffi.instantiate_kv_cache_layer(c, s, 0), (cache, saved)),
        (lambda c, s: ffi.instantiate_kv_cache_batched([c, c], [s, s], 0), (cache, saved)),
        (lambda n, _: ffi.increment_lengths(n, 2), (lengths, None)),
        (lambda n, _: ffi.increment_lengths(n, n), (lengths, None)),
    ]
    for fn, args in cases:
        hlo = jax.jit(fn).lower(*args).as_text()
        assert "output_operand_aliases" in hlo
        assert "edgellm_" in hlo


def _layers(rng, dtype, heads=(5, 2, 7, 1), caps=(37, 41, 37, 29)):
    # Per-layer Hkv (and KVcap) differ; D is shared.
    return [_random(rng, (B, h, c, D), dtype) for h, c in zip(heads, caps, strict=True)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_batched_matches_ref_into_poisoned_outputs(rng, dtype):
    layers = _layers(rng, dtype)
    seq_len = 23
    poisons = [_poison((x.shape[1], seq_len, D), dtype) for x in layers]
    ptrs = [p.unsafe_buffer_pointer() for p in poisons]

    @functools.partial(jax.jit, donate_argnums=0, keep_unused=True)
    def run(poisons, layers):
        del poisons
        return ffi.save_kv_cache_batched(layers, 2, seq_len)

    got = run(poisons, layers)
    assert [g.unsafe_buffer_pointer() for g in got] == ptrs
    want = ffi.save_kv_cache_batched_ref(layers, 2, seq_len)
    for g, w, x in zip(got, want, layers, strict=True):
        _assert_same(g, w)
        _assert_same(g, ffi.save_kv_cache_layer(x, 2, seq_len))


@pytest.mark.parametrize("dtype", DTYPES)
def test_instantiate_batched_matches_ref_in_place(rng, dtype):
    layers = _layers(rng, dtype)
    saved = [_random(rng, (x.shape[1], 29, D), dtype) for x in layers]
    want = ffi.instantiate_kv_cache_batched_ref(layers, saved, 0)
    ptrs = [x.unsafe_buffer_pointer() for x in layers]
    step = jax.jit(ffi.instantiate_kv_cache_batched, static_argnums=2, donate_argnums=0)
    got = step(layers, saved, 0)
    assert [g.unsafe_buffer_pointer() for g in got] == ptrs
    for g, w in zip(got, want, strict=True):
        _assert_same(g, w)


def test_save_then_instantiate_round_trip_moves_a_row(rng):
    layers = _layers(rng, jnp.bfloat16)
    saved = ffi.save_kv_cache_batched(layers, 0, 17)
    moved = ffi.instantiate_kv_cache_batched(layers, saved, 2)
    for x, y in zip(layers, moved, strict=True):
        _assert_same(y[2, :, :17], x[0, :, :17])
        _assert_same(y[2, :, 17:], x[2, :, 17:])
        _assert_same(y[:2], x[:2])


def test_vmap_matches_ref(rng):
    caches = _random(rng, (2, B, HKV, CAP, D), jnp.float32)
    saved = _random(rng, (2, HKV, 6, D), jnp.float32)
    _assert_same(
        jax.vmap(lambda c: ffi.save_kv_cache_layer(c, 1, 9))(caches),
        jax.vmap(lambda c: ffi.save_kv_cache_layer_ref(c, 1, 9))(caches),
    )
    got = jax.vmap(lambda c, s: ffi.instantiate_kv_cache_layer(c, s, 2))(caches, saved)
    want = jax.vmap(lambda c, s: ffi.instantiate_kv_cache_layer_ref(c, s, 2))(caches, saved)
    _assert_same(got, want)
    lengths = jnp.asarray(rng.randint(0, 50, size=(4, B)), jnp.int32)
    inc = jnp.asarray(rng.randint(1, 9, size=(B,)), jnp.int32)
    _assert_same(
        jax.vmap(lambda n: ffi.increment_lengths(n, inc))(lengths),
        jax.vmap(lambda n: ffi.increment_lengths_ref(n, inc))(lengths),
    )


@pytest.mark.parametrize("inc", [1, 7, np.int32(-2), "tensor"])
def test_increment_lengths_matches_ref_and_stays_in_place(rng, inc):
    lengths = jnp.asarray(rng.randint(1, 1000, size=(B,)), jnp.int32)
    if isinstance(inc, str):
        inc = jnp.asarray(rng.randint(1, 9, size=(B,)), jnp.int32)
    want = ffi.increment_lengths_ref(lengths, inc)
    ptr = lengths.unsafe_buffer_pointer()
    got = jax.jit(
        ffi.increment_lengths,
        static_argnums=() if isinstance(inc, jax.Array) else 1,
        donate_argnums=0,
    )(lengths, inc)
    assert got.unsafe_buffer_pointer() == ptr
    _assert_same(got, want)


def test_increment_lengths_in_fori_loop_matches_ref(rng):
    lengths = jnp.asarray(rng.randint(0, 10, size=(B,)), jnp.int32)
    per_row = jnp.asarray(rng.randint(1, 4, size=(B,)), jnp.int32)

    def run(inc_fn):
        body = lambda i, n: inc_fn(inc_fn(n, 1), per_row)  # noqa: E731
        return jax.jit(lambda n: jax.lax.fori_loop(0, 5, body, n))(lengths)

    _assert_same(run(ffi.increment_lengths), run(ffi.increment_lengths_ref))
    _assert_same(run(ffi.increment_lengths), lengths + 5 * (1 + per_row))


# Every bad input raises before anything runs, from the op and from its _ref alike.
SAVE = [ffi.save_kv_cache_layer, ffi.save_kv_cache_layer_ref]
INST = [ffi.instantiate_kv_cache_layer, ffi.instantiate_kv_cache_layer_ref]
SAVE_B = [ffi.save_kv_cache_batched, ffi.save_kv_cache_batched_ref]
INST_B = [ffi.instantiate_kv_cache_batched, ffi.instantiate_kv_cache_batched_ref]
INC = [ffi.increment_lengths, ffi.increment_lengths_ref]


@pytest.fixture
def cache(rng):
    return _random(rng, (4, HKV, CAP, D), jnp.float32)


@pytest.mark.parametrize("fn", SAVE)
@pytest.mark.parametrize(
    ("batch_idx", "seq_len", "exc", "match"),
    [
        (
            5,
            3,
            ValueError,
            r"save_kv_cache_layer: batch_idx=5 \(expected 0 <= batch_idx < 4 = "
            r"cache batch\); pass the row of the cache to use",
        ),
        (-1, 3, ValueError, r"batch_idx=-1 \(expected 0 <= batch_idx < 4"),
        (
            0,
            0,
            ValueError,
            r"seq_len=0 \(expected 1 <= seq_len <= 37 = cache KVcap\); a row "
            r"holds at most KVcap tokens",
        ),
        (0, 38, ValueError, r"seq_len=38 \(expected 1 <= seq_len <= 37"),
        (
            1.0,
            3,
            TypeError,
            r"batch_idx=1.0 \(expected a Python int or an int32 scalar array\); the row is a "
            r"buffer",
        ),
        (True, 3, TypeError, r"batch_idx=True \(expected a Python int or an int32 scalar"),
        (0, np.float32(2), TypeError, r"seq_len=.*\(expected a static Python int\)"),
    ],
)
def test_save_layer_rejects_bad_indices(fn, cache, batch_idx, seq_len, exc, match):
    with pytest.raises(exc, match=match):
        fn(cache, batch_idx, seq_len)


@pytest.mark.parametrize("fn", SAVE)
def test_save_layer_rejects_a_row_array_of_the_wrong_type(fn, cache):
    with pytest.raises(TypeError, match=r"batch_idx is int32\[2\] \(expected a Python int or an"):
        fn(cache, jnp.zeros(2, jnp.int32), 3)
    with pytest.raises(TypeError, match=r"batch_idx is float32\[\] \(expected .*jnp.int32\(row\)"):
        fn(cache, jnp.float32(0), 3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_traced_row_is_a_buffer_one_executable_serves_every_row(rng, dtype):
    layers = _layers(rng, dtype)
    saved = [_random(rng, (x.shape[1], 7, D), dtype) for x in layers]
    save = jax.jit(lambda ls, r: ffi.save_kv_cache_batched(ls, r, 7))
    put = jax.jit(lambda ls, s, r: ffi.instantiate_kv_cache_batched(ls, s, r))
    save_one = jax.jit(lambda c, r: ffi.save_kv_cache_layer(c, r, 7))
    put_one = jax.jit(lambda c, s, r: ffi.instantiate_kv_cache_layer(c, s, r))
    for row in range(B):
        r = jnp.int32(row)
        for got, want, x in zip(
            save(layers, r), ffi.save_kv_cache_batched_ref(layers, r, 7), layers, strict=True
        ):
            _assert_same(got, want)
            _assert_same(got, x[row, :, :7])

        _assert_same(save_one(layers[0], r), layers[0][row, :, :7])
        for got, want, x, s in zip(
            put(layers, saved, r),
            ffi.instantiate_kv_cache_batched_ref(layers, saved, row),
            layers,
            saved,
            strict=True,
        ):
            _assert_same(got, want)
            _assert_same(got[row, :, :7], s)
            _assert_same(got[row, :, 7:], x[row, :, 7:])
        _assert_same(put_one(layers[0], saved[0], r)[row, :, :7], saved[0])
    assert save._cache_size() == put._cache_size() == 1  # one executable for all rows
    assert save_one._cache_size() == put_one._cache_size() == 1


def test_cpu_handler_rejects_a_traced_row_out_of_range(rng):
    cache = _random(rng, (B, HKV, CAP, D), jnp.float32)
    save = jax.jit(lambda c, r: ffi.save_kv_cache_layer(c, r, 4))
    with pytest.raises(Exception, match=r"batch_idx=3 \(expected 0 <= batch_idx < 3"):
        jax.block_until_ready(save(cache, jnp.int32(B)))
    np.testing.assert_array_equal(np.asarray(save(cache, jnp.int32(2))), cache[2, :, :4])


@pytest.mark.parametrize("fn", SAVE)
@pytest.mark.parametrize(
    ("bad", "exc", "match"),
    [
        (
            np.zeros((HKV, CAP, D), np.float32),
            ValueError,
            r"cache_layer.shape=\(5, 37, 24\) \(expected rank 4 \[B, Hkv, KVcap, D\]\); pass one k "
            r"or v array of one layer",
        ),
        (
            jnp.zeros((2, HKV, CAP, D), jnp.int32),
            ValueError,
            r"cache_layer.dtype=int32 \(expected float32, float16 or bfloat16\)",
        ),
        ([1, 2], TypeError, r"cache_layer is list \(expected a jax.Array\)"),
    ],
)
def test_save_layer_rejects_bad_cache(fn, bad, exc, match):
    with pytest.raises(exc, match=match):
        fn(bad, 0, 1)


@pytest.mark.parametrize("fn", INST)
@pytest.mark.parametrize(
    ("saved_shape", "saved_dtype", "batch_idx", "match"),
    [
        (
            (HKV, 3, D),
            jnp.float32,
            4,
            r"instantiate_kv_cache_layer: batch_idx=4 \(expected 0 <= "
            r"batch_idx < 4 = cache batch\); pass the row",
        ),
        (
            (HKV - 1, 3, D),
            jnp.float32,
            0,
            r"saved.shape=\(4, 3, 24\) \(expected \[5, seq_len, 24\]"
            r" = \[Hkv, seq_len, D\] of cache\); pass what save_kv_cache_\* returned",
        ),
        (
            (HKV, 3, D + 1),
            jnp.float32,
            0,
            r"saved.shape=\(5, 3, 25\) \(expected \[5, seq_len, 24\]",
        ),
        (
            (HKV, CAP + 1, D),
            jnp.float32,
            0,
            r"seq_len=38 \(expected 1 <= seq_len <= 37 = cache "
            r"KVcap\)",
        ),
        (
            (HKV, 3, D),
            jnp.bfloat16,
            0,
            r"saved.dtype=bfloat16 \(expected float32 = cache.dtype\);"
            r" cast it with .astype first",
        ),
    ],
)
def test_instantiate_layer_rejects_mismatch(fn, cache, saved_shape, saved_dtype, batch_idx, match):
    with pytest.raises(ValueError, match=match):
        fn(cache, jnp.ones(saved_shape, saved_dtype), batch_idx)


@pytest.mark.parametrize("fn", SAVE_B)
def test_save_batched_names_the_bad_layer(fn, rng):
    layers = _layers(rng, jnp.float32)  # caps 37, 41, 37, 29
    with pytest.raises(
        ValueError,
        match=r"seq_len=30 \(expected 1 <= seq_len <= 29 = layers\[3\] "
        r"KVcap\)",
    ):
        fn(layers, 0, 30)
    with pytest.raises(
        ValueError,
        match=r"batch_idx=3 \(expected 0 <= batch_idx < 3 = layers\[0\]"
        r" batch\)",
    ):
        fn(layers, 3, 2)
    mixed = [*layers[:2], layers[2].astype(jnp.bfloat16)]
    with pytest.raises(
        ValueError,
        match=r"layers\[2\] has D=24, dtype=bfloat16 \(expected D=24, "
        r"dtype=float32 as layers\[0\]\); one launch copies one head dim and dtype",
    ):
        fn(mixed, 0, 2)
    with pytest.raises(TypeError, match=r"layers=list \(expected a non-empty list of"):
        fn([], 0, 2)


def test_save_batched_rejects_more_layers_than_the_kernel_table(rng):
    x = _random(rng, (1, 1, 2, 8), jnp.float32)
    n = ffi.MAX_BATCHED_LAYERS + 1
    with pytest.raises(
        ValueError,
        match=rf"len\(layers\)={n} \(expected <= 256, the kernel's "
        r"layer table\); split the layers over several calls",
    ):
        ffi.save_kv_cache_batched([x] * n, 0, 1)
    assert len(ffi.save_kv_cache_batched_ref([x] * n, 0, 1)) == n  # the ref has no table


@pytest.mark.parametrize("fn", INST_B)
def test_instantiate_batched_rejects_mismatch(fn, rng):
    layers = _layers(rng, jnp.float32)
    saved = [jnp.ones((x.shape[1], 4, D), jnp.float32) for x in layers]
    with pytest.raises(
        ValueError,
        match=r"len\(saved\)=3 \(expected 4 = len\(layers\)\); pass the"
        r" list save_kv_cache_batched returned",
    ):
        fn(layers, saved[:3], 0)
    swapped = [saved[1], saved[0], *saved[2:]]
    with pytest.raises(
        ValueError,
        match=r"saved\[0\].shape=\(2, 4, 24\) \(expected \[5, seq_len, "
        r"24\] = \[Hkv, seq_len, D\] of layers\[0\]\)",
    ):
        fn(layers, swapped, 0)
    uneven = [*saved[:3], jnp.ones((1, 5, D), jnp.float32)]
    with pytest.raises(
        ValueError,
        match=r"saved seq_len values \[4, 5\] \(expected one seq_len for "
        r"all layers\); save all layers of a row with one save_kv_cache_batched",
    ):
        fn(layers, uneven, 0)


@pytest.mark.parametrize("fn", INC)
def test_increment_lengths_rejects_bad_inputs(fn):
    lengths = jnp.arange(B, dtype=jnp.int32)
    with pytest.raises(
        ValueError,
        match=r"lengths is int64\[3\] \(expected int32 \[B\]\); keep "
        r"lengths as an int32 vector",
    ):
        fn(np.arange(B, dtype=np.int64), 1)
    with pytest.raises(
        ValueError,
        match=r"inc=int32\[4\] \(expected a Python int, or an int32 "
        r"array of lengths' shape \[3\]\); use a Python int for a uniform step",
    ):
        fn(lengths, jnp.ones(4, jnp.int32))
    with pytest.raises(ValueError, match=r"inc=float32\[3\] \(expected a Python int"):
        fn(lengths, jnp.ones(3, jnp.float32))
    with pytest.raises(ValueError, match=r"inc=True \(expected a Python int"):
        fn(lengths, True)
    with pytest.raises(ValueError, match=r"inc=2147483648 \(expected an int32 value\)"):
        fn(lengths, 2**31)


def test_module_constants_match_the_compiled_table():
    assert ffi.MAX_BATCHED_LAYERS == kv.MAX_BATCHED_LAYERS == 256
    assert "edgellm_save_kv_cache_batched" in ffi.registered_targets()["cpu"]


def test_import_registers_silently_without_initialising_devices():
    code = (
        "import edgellm_fn.ffi as f\n"
        "from jax._src import xla_bridge\n"
        "assert f.registered_targets()['cpu']\n"
        "assert not xla_bridge._backends, xla_bridge._backends\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
