"""The CUDA handler of the spec-decode KV commit (ffi/kv_commit.cu) against commit_kv_ref on
random data (GPU only): random trees, paths of every length, rows at the capacity edge, many
caches in one launch, aliasing in place, and the 2-byte-word path (odd D in half precision)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn import ffi
from edgellm_fn.ffi.kv_commit import commit_kv, commit_kv_ffi, commit_kv_ref

pytestmark = pytest.mark.gpu
DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]


@pytest.fixture(scope="module")
def gpu():
    if not ffi.cuda_available():
        pytest.fail("edgellm_fn was built without CUDA handlers: rebuild with nvcc on PATH")
    return jax.devices("gpu")[0]


def _inputs(rng, gpu, dtype, *, b, heads, cap, d, a, layers):
    put = functools.partial(jax.device_put, device=gpu)
    caches = [
        put(jnp.asarray(rng.uniform(-2, 2, (b, heads, cap, d)), dtype)) for _ in range(2 * layers)
    ]
    start = rng.randint(0, cap - 2, b).astype(np.int32)
    start[0] = cap - 3  # a row whose path runs past the capacity edge
    path = np.zeros((b, a), np.int32)
    for r in range(b):  # increasing node ids from the root (0), path[k] >= k
        path[r, 1:] = np.sort(rng.choice(np.arange(1, 3 * a), a - 1, replace=False))
    n = rng.randint(0, a + 1, b).astype(np.int32)
    return caches, put(jnp.asarray(start)), put(jnp.asarray(path)), put(jnp.asarray(n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("b", "heads", "cap", "d", "a", "layers"),
    [(3, 2, 40, 64, 5, 2), (4, 8, 128, 128, 9, 16), (2, 3, 33, 7, 4, 1), (1, 1, 16, 8, 1, 3)],
)
def test_cuda_handler_equals_ref(rng, gpu, dtype, b, heads, cap, d, a, layers):
    caches, start, path, n = _inputs(
        rng, gpu, dtype, b=b, heads=heads, cap=cap, d=d, a=a, layers=layers
    )
    want = jax.jit(commit_kv_ref)(caches, start, path, n)
    got = jax.jit(commit_kv_ffi)(caches, start, path, n)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
    assert "edgellm_commit_kv" in jax.jit(commit_kv).lower(caches, start, path, n).as_text()


def test_cuda_handler_aliases_donated_caches_in_place(rng, gpu):
    caches, start, path, n = _inputs(
        rng, gpu, jnp.bfloat16, b=2, heads=4, cap=64, d=64, a=6, layers=4
    )
    want = commit_kv_ref(caches, start, path, n)
    before = [c.unsafe_buffer_pointer() for c in caches]
    got = jax.jit(commit_kv_ffi, donate_argnums=0)(caches, start, path, n)
    assert [g.unsafe_buffer_pointer() for g in got] == before
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(np.asarray(g, np.float32), np.asarray(w, np.float32))
