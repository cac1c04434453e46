"""The fused decode GEMV as an XLA FFI custom call, with its pure-JAX twin ``gemv_ref``.

One op covers every projection of a decode step (weights ``[N, K]``, the checkpoint's layout)::

    qkv     = gemv(x, wqkv, norm_weight=attn_norm, bias=bqkv)
    x       = gemv(attn, wo, bias=bo, residual=x)
    h       = gemv(x, w_gate_up, norm_weight=mlp_norm, gated=True)      # act(gate) * up
    x       = gemv(h, w_down, bias=b_down, residual=x)
    logits  = gemv(h_last, lm_head, norm_weight=final_norm, out_dtype=float32)

The CUDA handler streams each weight byte once (M = rows of x <= 16); the CPU handler is its
twin. Both round where the reference does (norm output, product, bias sum, activation, residual
sum), so the kernel path and the reference path give the same tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {"silu": 0, "relu": 1, "gelu": 2, "gelu_new": 3, "gelu_pytorch_tanh": 3}
#: Largest M (rows of x) the CUDA handler takes.
MAX_ROWS = 16
_EMPTY = np.zeros((0,), np.float32)


def _check(x: jax.Array, w: jax.Array, gated: bool, activation: str) -> None:
    if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(
            f"gemv: x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)} (expected x [..., K] and "
            "w [N, K], the checkpoint's [out, in] layout)"
        )
    if jnp.dtype(x.dtype) != jnp.dtype(w.dtype):
        raise ValueError(f"gemv: x.dtype={x.dtype} and w.dtype={w.dtype} (expected one dtype)")
    if gated and w.shape[0] % 2:
        raise ValueError(f"gemv: gated=True with N={w.shape[0]} (expected an even N: gate | up)")
    if activation not in ACTIVATIONS:
        raise ValueError(f"gemv: activation={activation!r} (expected one of {sorted(ACTIVATIONS)})")


def gemv(
    x: jax.Array,
    w: jax.Array,
    *,
    norm_weight: jax.Array | None = None,
    eps: float = 1e-6,
    bias: jax.Array | None = None,
    residual: jax.Array | None = None,
    gated: bool = False,
    activation: str = "silu",
    out_dtype=None,
) -> jax.Array:
    """Fused ``[rms_norm] -> x @ w.T -> [+bias] -> [act(gate) * up] -> [+residual]``.

    Args:
      x: ``[..., K]`` activations (float32, bfloat16 or float16; the CUDA handler takes the two
        16-bit types and at most 16 rows).
      w: ``[N, K]`` weights in ``x``'s dtype.
      norm_weight: ``[K]``: RMS-normalise ``x`` first (float32 statistics, as ``rms_norm``).
      eps: the norm's epsilon.
      bias: ``[N]``.
      residual: ``[..., N_out]`` added last.
      gated: ``N = 2F``: the output is ``act(y[:, :F]) * y[:, F:]``.
      activation: the gate's activation (a ``hidden_act`` name).
      out_dtype: ``x.dtype`` (default) or float32 (logits; no rounding of the product).

    Returns:
      ``[..., N_out]`` with ``N_out = N / 2`` when gated, else ``N``.
    """
    _check(x, w, gated, activation)
    out_dtype = jnp.dtype(out_dtype or x.dtype)
    lead, k = x.shape[:-1], x.shape[-1]
    n_out = w.shape[0] // 2 if gated else w.shape[0]
    m = int(np.prod(lead, dtype=np.int64))
    call = jax.ffi.ffi_call(
        "edgellm_gemv",
        jax.ShapeDtypeStruct((m, n_out), out_dtype),
        vmap_method="sequential",
    )
    empty = jnp.asarray(_EMPTY, x.dtype)
    out = call(
        x.reshape(m, k),
        w,
        empty if norm_weight is None else norm_weight,
        empty if bias is None else bias,
        empty if residual is None else residual.reshape(m, n_out),
        eps=np.float32(eps),
        gated=bool(gated),
        activation=np.int32(ACTIVATIONS[activation]),
    )
    return out.reshape(*lead, n_out)


def gemv_ref(
    x: jax.Array,
    w: jax.Array,
    *,
    norm_weight: jax.Array | None = None,
    eps: float = 1e-6,
    bias: jax.Array | None = None,
    residual: jax.Array | None = None,
    gated: bool = False,
    activation: str = "silu",
    out_dtype=None,
) -> jax.Array:
    """``gemv`` in plain JAX: exactly the reference path of ``models/llama.py``."""
    from edgellm_fn.models import llama

    _check(x, w, gated, activation)
    h = x if norm_weight is None else llama.rms_norm(x, norm_weight, eps)
    if out_dtype is not None and jnp.dtype(out_dtype) == jnp.float32 and x.dtype != jnp.float32:
        dims = (((h.ndim - 1,), (1,)), ((), ()))
        y = jax.lax.dot_general(h, w, dims, preferred_element_type=jnp.float32)
        return y if bias is None else y + bias.astype(jnp.float32)
    y = llama.linear(h, w, bias)
    if gated:
        gate, up = jnp.split(y, 2, axis=-1)
        y = llama.ACTIVATIONS[activation](gate) * up
    return y if residual is None else residual + y
