r"""Speculative-decoding KV commit as an XLA FFI custom call (CPU), with its `_ref` twin.

After a verify step wrote the tree's KV into slots `start .. start+V-1`, the accepted path
(tree nodes `path[0] = 0 < path[1] < ...`, `n` of them) moves into contiguous slots, for the k
and v arrays of every layer in ONE call, in place (each cache is aliased to its result)::

    slot:     start  +1   +2   +3   +4          path = [0, 2, 3], n = 3
    before:  [ r    a    b    b.x  c  ]
    after:   [ r    b    b.x  b.x  c  ]          slots past start + n are left as they were

`commit_kv_ref` (pure JAX, `runtime/spec_tree.py`) is the reference; `commit_kv` takes the
handler on the CPU, and on a GPU when the package was built with its CUDA handlers
(`kv_commit.cu`, one launch for every cache; `ffi.cuda_available()`), else the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from edgellm_fn.ffi import _kv_commit  # noqa: F401  (registered by edgellm_fn.ffi)
from edgellm_fn.runtime.spec_tree import commit_kv_ref as commit_kv_ref

_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def _check(caches: Sequence[jax.Array], start, path, n) -> tuple[jax.Array, ...]:
    op = "commit_kv"
    if not isinstance(caches, Sequence) or not caches:
        raise TypeError(f"{op}: caches={type(caches).__name__} (expected a non-empty list)")
    b = caches[0].shape[0]
    for i, c in enumerate(caches):
        if c.ndim != 4 or c.shape[0] != b or jnp.dtype(c.dtype) not in _DTYPES:
            raise ValueError(
                f"{op}: caches[{i}] is {jnp.dtype(c.dtype)}{list(c.shape)} (expected a float "
                f"[B={b}, H, C, D] array)"
            )
    for name, x, shape in (("start", start, (b,)), ("n", n, (b,)), ("path", path, None)):
        ok = jnp.dtype(x.dtype) == jnp.int32 and (
            x.shape == shape if shape else x.ndim == 2 and x.shape[0] == b
        )
        if not ok:
            raise ValueError(
                f"{op}: {name} is {jnp.dtype(x.dtype)}{list(x.shape)} (expected int32 "
                f"{list(shape) if shape else [b, 'A']})"
            )
    return tuple(caches)


def commit_kv_ffi(
    caches: Sequence[jax.Array], start: jax.Array, path: jax.Array, n: jax.Array
) -> tuple[jax.Array, ...]:
    """The FFI handler of the default backend (same arguments and result as
    ``commit_kv_ref``)."""
    caches = _check(caches, start, path, n)
    call = jax.ffi.ffi_call(
        "edgellm_commit_kv",
        [jax.ShapeDtypeStruct(c.shape, c.dtype) for c in caches],
        vmap_method="sequential",
        input_output_aliases={3 + i: i for i in range(len(caches))},
    )
    return tuple(call(start, path, n, *caches))


def commit_kv(
    caches: Sequence[jax.Array], start: jax.Array, path: jax.Array, n: jax.Array
) -> tuple[jax.Array, ...]:
    """Moves the accepted path's KV into contiguous slots (see the module docstring): the
    handler on CPU, ``commit_kv_ref`` elsewhere.

    Args:
      caches: k and v arrays ``[B, H, C, D]`` of every layer (donate them: updated in place).
      start: ``[B]`` int32 first tree slot; path: ``[B, A]`` int32 accepted nodes;
      n: ``[B]`` int32 how many (0: nothing moves).
    """
    caches = _check(caches, start, path, n)
    # Chosen at trace time as the xla provider chooses its path (a lax.platform_dependent
    # conditional would make XLA copy the donated caches).
    from edgellm_fn.ffi import cuda_available  # lazily: edgellm_fn.ffi imports this module

    backend = jax.default_backend()
    handler = backend == "cpu" or (backend == "gpu" and cuda_available())
    fn = commit_kv_ffi if handler and path.shape[1] <= MAX_ACCEPT_CUDA else commit_kv_ref
    return fn(caches, start, path, n)


#: Longest accepted path (``path.shape[1]``) the CUDA handler holds per row (kv_commit.cu).
MAX_ACCEPT_CUDA = 64
