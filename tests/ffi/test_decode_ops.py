"""The fused decode GEMV and decode attention: CPU handlers against their `_ref` twins."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import ffi


def _f32(x):
    return np.asarray(jnp.asarray(x, jnp.float32))


def _close(got, want, dtype) -> None:
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    err = np.linalg.norm(_f32(got) - _f32(want)) / max(np.linalg.norm(_f32(want)), 1e-30)
    assert np.all(np.isfinite(_f32(got))) and err <= tol, err


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    "variant",
    ["plain", "norm_bias", "gated_residual", "logits", "residual_bias"],
)
@pytest.mark.parametrize("m", [1, 3])
def test_gemv_equals_ref(dtype, variant, m, rng):
    k, n = 40, 56  # K a multiple of 8; odd row counts exercise the tails
    x = jnp.asarray(rng.randn(m, k), dtype)
    w = jnp.asarray(rng.randn(n, k) / np.sqrt(k), dtype)
    kw = {
        "plain": {},
        "norm_bias": dict(
            norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype),
            bias=jnp.asarray(0.1 * rng.randn(n), dtype),
            eps=1e-5,
        ),
        "gated_residual": dict(
            gated=True,
            residual=jnp.asarray(rng.randn(m, n // 2), dtype),
            norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype),
        ),
        "logits": dict(
            norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype), out_dtype=jnp.float32
        ),
        "residual_bias": dict(
            residual=jnp.asarray(rng.randn(m, n), dtype),
            bias=jnp.asarray(0.1 * rng.randn(n), dtype),
        ),
    }[variant]
    got = jax.jit(lambda a, b: ffi.gemv(a, b, **kw))(x, w)
    want = ffi.gemv_ref(x, w, **kw)
    assert got.shape == want.shape and got.dtype == want.dtype
    _close(got, want, dtype)


@pytest.mark.parametrize("activation", ["silu", "gelu", "gelu_pytorch_tanh", "relu"])
def test_gated_activations_equal_ref(activation, rng):
    x = jnp.asarray(rng.randn(2, 16), jnp.bfloat16)
    w = jnp.asarray(rng.randn(32, 16) / 4, jnp.bfloat16)
    got = ffi.gemv(x, w, gated=True, activation=activation)
    _close(got, ffi.gemv_ref(x, w, gated=True, activation=activation), jnp.bfloat16)


def test_gemv_rejects_bad_shapes_naming_them():
    x, w = jnp.zeros((2, 8), jnp.float32), jnp.zeros((4, 6), jnp.float32)
    with pytest.raises(ValueError, match=r"gemv: x.shape=\(2, 8\), w.shape=\(4, 6\).*\[N, K\]"):
        ffi.gemv(x, w)
    with pytest.raises(ValueError, match="gated=True with N=3"):
        ffi.gemv(jnp.ones((1, 6)), jnp.ones((3, 6)), gated=True)
    with pytest.raises(ValueError, match="activation='tanh'"):
        ffi.gemv(jnp.ones((1, 6)), jnp.ones((4, 6)), gated=True, activation="tanh")


def _attention_inputs(rng, dtype, b=3, hkv=2, g=2, cap=40, d=16, rot=None, rope_batch=1):
    hq = hkv * g
    rot = rot or d
    qkv = jnp.asarray(rng.randn(b, (hq + 2 * hkv) * d), dtype)
    k = jnp.asarray(rng.randn(b, hkv, cap, d), dtype)
    v = jnp.asarray(rng.randn(b, hkv, cap, d), dtype)
    rope = jnp.asarray(rng.uniform(-1, 1, (rope_batch, cap, rot)).astype(np.float32))
    return qkv, k, v, rope


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(
    "case", ["full", "qk_norm", "window", "partial_rotary", "gqa4_rope_per_row", "edges"]
)
def test_decode_attention_equals_ref(dtype, case, rng):
    kwargs, shape = {}, {}
    if case == "partial_rotary":
        shape = dict(rot=8)
    if case == "gqa4_rope_per_row":
        shape = dict(g=4, rope_batch=3)
    qkv, k, v, rope = _attention_inputs(rng, dtype, **shape)
    d = k.shape[-1]
    if case == "qk_norm":
        kwargs = dict(
            q_norm=jnp.asarray(1 + 0.1 * rng.randn(d), dtype),
            k_norm=jnp.asarray(1 + 0.1 * rng.randn(d), dtype),
            eps=1e-6,
        )
    if case == "window":
        kwargs = dict(window=5)
    start = jnp.asarray([7, 0, 30], jnp.int32)
    ctx = start + 1
    if case == "edges":  # last slot of the cache; a finished row (start == ctx) writes nothing
        start = jnp.asarray([39, 12, 0], jnp.int32)
        ctx = jnp.asarray([40, 12, 1], jnp.int32)
    got = jax.jit(lambda *a: ffi.decode_attention(*a, **kwargs))(qkv, k, v, rope, start, ctx)
    want = ffi.decode_attention_ref(qkv, k, v, rope, start, ctx, **kwargs)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    _close(got[0], want[0], dtype)
    tol = 1e-6 if dtype == jnp.float32 else 0  # 16-bit: the appended k/v are bit-exact
    np.testing.assert_allclose(_f32(got[1]), _f32(want[1]), rtol=tol, atol=tol)
    np.testing.assert_allclose(_f32(got[2]), _f32(want[2]), rtol=tol, atol=tol)


def test_decode_attention_updates_the_cache_in_place(rng):
    qkv, k, v, rope = _attention_inputs(rng, jnp.bfloat16)
    start = jnp.asarray([3, 4, 5], jnp.int32)
    step = jax.jit(ffi.decode_attention, donate_argnums=(1, 2))
    hlo = step.lower(qkv, k, v, rope, start, start + 1).as_text()
    assert "output_operand_aliases" in hlo or "tf.aliasing_output" in hlo
    before = (k.unsafe_buffer_pointer(), v.unsafe_buffer_pointer())
    _, k2, v2 = step(qkv, k, v, rope, start, start + 1)
    assert (k2.unsafe_buffer_pointer(), v2.unsafe_buffer_pointer()) == before


def test_decode_attention_rejects_bad_inputs_naming_them(rng):
    qkv, k, v, rope = _attention_inputs(rng, jnp.float32)
    start = jnp.zeros((3,), jnp.int32)
    with pytest.raises(ValueError, match=r"qkv.shape=\(3, 5\)"):
        ffi.decode_attention(qkv[:, :5], k, v, rope, start, start + 1)
    with pytest.raises(ValueError, match=r"start \(2,\) int32 \(expected \[3\] int32\)"):
        ffi.decode_attention(qkv, k, v, rope, start[:2], start + 1)
    with pytest.raises(ValueError, match="q_norm and k_norm together"):
        ffi.decode_attention(qkv, k, v, rope, start, start + 1, q_norm=jnp.ones((16,)))
