"""The one-call decode layer stack: CPU handler against its `_ref` twin and the per-op calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import ffi

B, H, HQ, HKV, D, F, C = 2, 32, 4, 2, 8, 48, 24


def _layers(rng, dtype, n, *, bias: bool, qk_norm: bool):
    def w(*shape, s=1.0):
        return jnp.asarray(s * rng.randn(*shape), dtype)

    out = []
    for _ in range(n):
        lp = dict(
            attn_norm=w(H, s=0.1) + 1, wqkv=w((HQ + 2 * HKV) * D, H, s=H**-0.5),
            wo=w(H, HQ * D, s=(HQ * D) ** -0.5), mlp_norm=w(H, s=0.1) + 1,
            w_gate_up=w(2 * F, H, s=H**-0.5), w_down=w(H, F, s=F**-0.5),
        )  # fmt: skip
        if bias:
            lp.update(bqkv=w((HQ + 2 * HKV) * D, s=0.1), bo=w(H, s=0.1))
            lp.update(b_gate_up=w(2 * F, s=0.1), b_down=w(H, s=0.1))
        if qk_norm:
            lp.update(q_norm=w(D, s=0.1) + 1, k_norm=w(D, s=0.1) + 1)
        out.append(lp)
    return out


def _inputs(rng, dtype, n):
    x = jnp.asarray(rng.randn(B, H), dtype)
    rope = jnp.asarray(
        np.concatenate([np.cos(rng.rand(1, C, D // 2)), np.sin(rng.rand(1, C, D // 2))], -1),
        jnp.float32,
    )
    ks = [jnp.asarray(rng.randn(B, HKV, C, D), dtype) for _ in range(n)]
    vs = [jnp.asarray(rng.randn(B, HKV, C, D), dtype) for _ in range(n)]
    start = jnp.asarray([9, 0], jnp.int32)
    return x, rope, start, start + 1, ks, vs


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("case", ["llama", "qwen2_bias", "qwen3_qk_norm_window"])
def test_decode_stack_equals_per_op_calls_and_ref(dtype, case, rng):
    n = 3
    layers = _layers(rng, dtype, n, bias=case == "qwen2_bias", qk_norm=case.startswith("qwen3"))
    windows = [0, 4, 0] if "window" in case else [0] * n
    x, rope, start, ctx, ks, vs = _inputs(rng, dtype, n)
    kw = dict(windows=windows, eps=1e-5, activation="silu")
    got = jax.jit(lambda *a: ffi.decode_stack(layers, *a, **kw))(x, rope, start, ctx, ks, vs)
    per_op = jax.jit(
        lambda *a: ffi.decode_stack_ref(
            layers, *a, linear=ffi.gemv, attend=ffi.decode_attention, **kw
        )
    )(x, rope, start, ctx, ks, vs)
    want = ffi.decode_stack_ref(layers, x, rope, start, ctx, ks, vs, **kw)
    # The stack runs the per-op CPU twins in order: bit-identical to one custom call per op.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(per_op), strict=True):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    f = lambda t: np.asarray(jnp.asarray(t, jnp.float32))  # noqa: E731
    err = np.linalg.norm(f(got[0]) - f(want[0])) / np.linalg.norm(f(want[0]))
    assert np.all(np.isfinite(f(got[0]))) and err <= (1e-5 if dtype == jnp.float32 else 2e-2), err
    for i, (a, b) in enumerate(zip(got[1] + got[2], want[1] + want[2], strict=True)):
        # Layer 0's appended k/v are bit-exact in 16 bits; later layers see rounded inputs.
        tol = 1e-5 if dtype == jnp.float32 else (0 if i % n == 0 else 5e-2)
        np.testing.assert_allclose(f(a), f(b), rtol=tol, atol=tol)


def test_decode_stack_updates_every_cache_in_place(rng):
    layers = _layers(rng, jnp.bfloat16, 2, bias=False, qk_norm=False)
    x, rope, start, ctx, ks, vs = _inputs(rng, jnp.bfloat16, 2)
    step = jax.jit(
        lambda x, ks, vs: ffi.decode_stack(layers, x, rope, start, ctx, ks, vs, windows=[0, 0]),
        donate_argnums=(1, 2),
    )
    hlo = step.lower(x, ks, vs).as_text()
    assert hlo.count("output_operand_aliases") + hlo.count("tf.aliasing_output") >= 1
    before = [t.unsafe_buffer_pointer() for t in ks + vs]
    _, ks2, vs2 = step(x, ks, vs)
    assert [t.unsafe_buffer_pointer() for t in ks2 + vs2] == before


def test_decode_stack_rejects_bad_inputs_naming_them(rng):
    layers = _layers(rng, jnp.float32, 2, bias=False, qk_norm=False)
    x, rope, start, ctx, ks, vs = _inputs(rng, jnp.float32, 2)
    with pytest.raises(ValueError, match=r"2 layers, 1 k caches, 2 v caches, 2 windows"):
        ffi.decode_stack(layers, x, rope, start, ctx, ks[:1], vs, windows=[0, 0])
    bad = [dict(layers[0]), layers[1]]
    del bad[0]["wo"]
    with pytest.raises(ValueError, match=r"layer 0 lacks \['wo'\]"):
        ffi.decode_stack(bad, x, rope, start, ctx, ks, vs, windows=[0, 0])
    bad = [layers[0], dict(layers[1], q_norm=jnp.ones((D,)))]
    with pytest.raises(ValueError, match="layer 1 has only one of q_norm/k_norm"):
        ffi.decode_stack(bad, x, rope, start, ctx, ks, vs, windows=[0, 0])
    bad = [layers[0], dict(layers[1], w_down=jnp.ones((H, F + 8)))]  # the handler's own check
    with pytest.raises(
        Exception, match=r"edgellm_decode_stack: layer 1: edgellm_gemv: w \[32, 56\]"
    ):
        jax.block_until_ready(ffi.decode_stack(bad, x, rope, start, ctx, ks, vs, windows=[0, 0]))
