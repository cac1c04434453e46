"""CUDA decode kernels (gemv, decode_attention) against float32 references (GPU only).

Inputs are fresh random values (never zeros); the caches the attention op updates in place are
poisoned (NaN) outside the slots the reference reads, so an unwritten or misplaced slot shows.
Greedy tokens of the kernel path equal the reference path on the demo model (32 steps, ragged).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import create_state, decode, embed, ffi, load_engine, prefill
from edgellm_fn.demo import demo_model_dir
from edgellm_fn.engine.xla import XlaEngine

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _cuda():
    if not ffi.cuda_available() or jax.default_backend() != "gpu":
        pytest.fail("needs a GPU and the CUDA handlers (scripts/gpu_check.sh builds them)")


def _rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.all(np.isfinite(got))
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def _up(tree):
    return jax.tree_util.tree_map(
        lambda a: None if a is None else a.astype(jnp.float32), tree, is_leaf=lambda a: a is None
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("variant", ["norm_bias", "gated", "residual", "logits"])
@pytest.mark.parametrize(("n", "k"), [(520, 264), (2048, 2048), (1032, 4104)])
def test_gemv_equals_float32_reference(dtype, m, variant, n, k):
    rng = np.random.RandomState(m * 7 + n)
    x = jnp.asarray(rng.randn(m, k), dtype)
    w = jnp.asarray(rng.randn(n, k) / np.sqrt(k), dtype)
    kw = dict(
        norm_bias=dict(
            norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype),
            bias=jnp.asarray(0.1 * rng.randn(n), dtype),
        ),
        gated=dict(gated=True, norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype)),
        residual=dict(residual=jnp.asarray(rng.randn(m, n), dtype)),
        logits=dict(norm_weight=jnp.asarray(1 + 0.1 * rng.randn(k), dtype), out_dtype=jnp.float32),
    )[variant]
    got = jax.jit(lambda a, b: ffi.gemv(a, b, **kw))(x, w)
    ref_kw = {key: (v.astype(jnp.float32) if hasattr(v, "astype") else v) for key, v in kw.items()}
    ref_kw.pop("out_dtype", None)
    want = ffi.gemv_ref(x.astype(jnp.float32), w.astype(jnp.float32), **ref_kw)
    assert got.shape == want.shape
    assert _rel(got, want) <= 1e-2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize(
    ("b", "hkv", "g", "d", "cap", "window", "qk_norm"),
    [
        (1, 8, 4, 64, 4096, 0, False),
        (3, 2, 7, 64, 300, 0, False),
        (4, 8, 2, 128, 1024, 0, True),
        (2, 1, 8, 48, 96, 16, False),
        (16, 4, 1, 256, 64, 0, False),
        (5, 2, 3, 24, 40, 0, True),
    ],
)
def test_decode_attention_equals_float32_reference(dtype, b, hkv, g, d, cap, window, qk_norm):
    rng = np.random.RandomState(b * 31 + d)
    hq = hkv * g
    qkv = jnp.asarray(rng.randn(b, (hq + 2 * hkv) * d), dtype)
    start = rng.randint(0, cap, size=b).astype(np.int32)
    start[0] = cap - 1  # the last slot
    ctx = np.minimum(start + 1, cap).astype(np.int32)
    if b > 2:
        ctx[1] = start[1]  # a finished row: writes nothing
    kv = rng.randn(2, b, hkv, cap, d).astype(np.float32)
    slot = np.arange(cap)[None, None, :, None]
    kv = np.where(slot <= start[None, :, None, None, None], kv, np.nan)  # poison unread slots
    k, v = jnp.asarray(kv[0], dtype), jnp.asarray(kv[1], dtype)
    rope = jnp.asarray(rng.uniform(-1, 1, (1, cap, d)).astype(np.float32))
    kw = dict(window=window)
    if qk_norm:
        kw.update(
            q_norm=jnp.asarray(1 + 0.1 * rng.randn(d), dtype),
            k_norm=jnp.asarray(1 + 0.1 * rng.randn(d), dtype),
        )
    start_j, ctx_j = jnp.asarray(start), jnp.asarray(ctx)
    out, k2, v2 = jax.jit(lambda *a: ffi.decode_attention(*a, **kw))(
        qkv, k, v, rope, start_j, ctx_j
    )
    f32 = {
        key: (val.astype(jnp.float32) if hasattr(val, "astype") else val) for key, val in kw.items()
    }
    ref = ffi.decode_attention_ref(
        qkv.astype(jnp.float32),
        jnp.nan_to_num(k.astype(jnp.float32)),
        jnp.nan_to_num(v.astype(jnp.float32)),
        rope,
        start_j,
        ctx_j,
        **f32,
    )
    live = np.asarray(ctx) > 0
    assert _rel(np.asarray(out, np.float32)[live], np.asarray(ref[0])[live]) <= 1e-2
    for r in range(b):  # the appended slot is right, every later (poisoned) slot untouched
        got_k, orig_k = np.asarray(k2[r], np.float32), np.asarray(k[r], np.float32)
        assert np.all(np.isnan(got_k[:, start[r] + 1 :]))
        if ctx[r] > start[r]:
            assert _rel(got_k[:, start[r]], np.asarray(ref[1][r])[:, start[r]]) <= 1e-2
        else:
            np.testing.assert_array_equal(got_k[:, start[r]], orig_k[:, start[r]])


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_kernel_path_greedy_equals_reference_on_the_demo_model(rows):
    """1-2 rows: every projection on the GEMV kernel; 3 rows: XLA's GEMM, attention fused."""
    kw = dict(max_batch_size=rows, max_input_len=32, kv_capacity=128)
    ref = load_engine(demo_model_dir(), kernels="off", **kw)
    fast = XlaEngine(ref.config, ref.params, "auto")
    assert fast.decode_path(rows)[0] == "kernels"
    prompts = [list(b"def main():\n    "), list(b"import os"), list(b"class A:\n    def f(self")]
    prompts = prompts[:rows]
    lengths = np.array([len(p) for p in prompts])
    ids = np.zeros((rows, 32), np.int32)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    toks = []
    for engine in (ref, fast):
        state = prefill(engine, create_state(engine.config, rows), embed(engine, ids), lengths)
        out = []
        for _ in range(32):
            t = np.asarray(state.io.logits).argmax(-1)
            out.append(t)
            state = decode(engine, state, embed(engine, jnp.asarray(t[:, None], jnp.int32)))
        toks.append(np.stack(out, 1))
    np.testing.assert_array_equal(toks[1], toks[0])
