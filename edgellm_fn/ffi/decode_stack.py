"""All decoder layers of a decode step as one XLA FFI custom call; twin: ``decode_stack_ref``.

Per layer, for one new token per row (``decode_stack.h`` has the buffer order)::

    qkv  = gemv(x, wqkv, norm_weight=attn_norm, bias=bqkv)
    attn = decode_attention(qkv, k, v, rope, start, context_lengths, q_norm, k_norm, window)
    x    = gemv(attn, wo, bias=bo, residual=x)
    h    = gemv(x, w_gate_up, norm_weight=mlp_norm, bias=b_gate_up, gated=True)
    x    = gemv(h, w_down, bias=b_down, residual=x)

The handlers run the per-op plans of ``gemv`` and ``decode_attention`` (the same CUDA kernels and
CPU twins); being one call, the CUDA handler chains its kernels as programmatic dependent
launches (``pdl``), so each GEMV streams its weights while the previous kernel finishes. Set
``EDGELLM_FN_PDL=0`` to launch them plainly (an A/B switch for benchmarks; read at trace time).
``decode_stack_ref`` is the same loop over ``gemv_ref`` / ``decode_attention_ref``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .decode_attention import _check as _check_attention
from .decode_attention import decode_attention_ref, default_splits
from .gemv import ACTIVATIONS, gemv_ref
from .gemv import _check as _check_gemv

#: Per-layer weights in call order; optional ones (biases, q/k norms) may be missing or None.
LAYER_KEYS = (
    "attn_norm", "wqkv", "bqkv", "q_norm", "k_norm", "wo", "bo",
    "mlp_norm", "w_gate_up", "b_gate_up", "w_down", "b_down",
)  # fmt: skip
_OPTIONAL = frozenset({"bqkv", "q_norm", "k_norm", "bo", "b_gate_up", "b_down"})
_FIXED_ARGS, _FIXED_RETS = 5, 6  # x, rope, start, ctx, none | x, qkv, attn, h, part_acc, part_ml
_EMPTY = np.zeros((0,), np.float32)


def _check(layers, x, k_caches, v_caches, windows, activation) -> None:
    n = len(layers)
    if n == 0 or len(k_caches) != n or len(v_caches) != n or len(windows) != n:
        raise ValueError(
            f"decode_stack: {n} layers, {len(k_caches)} k caches, {len(v_caches)} v caches, "
            f"{len(windows)} windows (expected one of each per layer, at least one layer)"
        )
    if x.ndim != 2:
        raise ValueError(f"decode_stack: x.shape={tuple(x.shape)} (expected [B, H])")
    for i, lp in enumerate(layers):
        missing = [k for k in LAYER_KEYS if k not in _OPTIONAL and lp.get(k) is None]
        if missing:
            raise ValueError(f"decode_stack: layer {i} lacks {missing} (expected {LAYER_KEYS})")
        if (lp.get("q_norm") is None) != (lp.get("k_norm") is None):
            raise ValueError(f"decode_stack: layer {i} has only one of q_norm/k_norm")
        _check_gemv(x, lp["wqkv"], False, activation)
        _check_gemv(x, lp["w_gate_up"], True, activation)


def decode_stack(
    layers: Sequence[Mapping[str, jax.Array]],
    x: jax.Array,
    rope: jax.Array,
    start: jax.Array,
    context_lengths: jax.Array,
    k_caches: Sequence[jax.Array],
    v_caches: Sequence[jax.Array],
    *,
    windows: Sequence[int],
    eps: float = 1e-6,
    activation: str = "silu",
    scale: float | None = None,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """All decoder layers for one new token per row (see the module docstring).

    Args:
      layers: per layer the ``LAYER_KEYS`` weights (``[N, K]`` projections, ``[K]`` norms).
      x: ``[B, H]`` embedded new tokens; rope: ``[1 or B, C, rot]`` float32.
      start: ``[B]`` int32 slot of the new token; context_lengths: ``[B]`` valid slots after it.
      k_caches, v_caches: per layer ``[B, Hkv, C, D]``, updated in place (donate them).
      windows: per layer sliding window (0 = full attention).
      eps: every RMS norm's epsilon; activation: the gate's (a ``hidden_act`` name).
      scale: the attention score scale, ``D ** -0.5`` by default.

    Returns:
      ``(x [B, H] before the final norm, k_caches, v_caches)``.
    """
    _check(layers, x, k_caches, v_caches, windows, activation)
    b, hidden = x.shape
    qkv = jax.ShapeDtypeStruct((b, layers[0]["wqkv"].shape[0]), x.dtype)
    _, hq, cap, d = _check_attention(qkv, k_caches[0], v_caches[0], rope, start, context_lengths)
    n = len(layers)
    splits = default_splits(b, k_caches[0].shape[1], cap)
    f32 = jnp.float32
    out_shapes = [
        jax.ShapeDtypeStruct((b, hidden), x.dtype),
        qkv,
        jax.ShapeDtypeStruct((b, hq * d), x.dtype),
        jax.ShapeDtypeStruct((b, layers[0]["w_gate_up"].shape[0] // 2), x.dtype),
        jax.ShapeDtypeStruct((b, hq, splits, d), f32),
        jax.ShapeDtypeStruct((b, hq, splits, 2), f32),
    ]
    aliases = {}
    for i in range(n):
        out_shapes += [jax.ShapeDtypeStruct(k_caches[i].shape, k_caches[i].dtype)] * 2
        base = _FIXED_ARGS + i * (len(LAYER_KEYS) + 2) + len(LAYER_KEYS)
        aliases[base] = _FIXED_RETS + 2 * i
        aliases[base + 1] = _FIXED_RETS + 2 * i + 1
    empty = jnp.asarray(_EMPTY, x.dtype)
    operands = [x, rope, start, context_lengths, empty]
    for lp, k, v in zip(layers, k_caches, v_caches, strict=True):
        operands += [empty if lp.get(key) is None else lp[key] for key in LAYER_KEYS]
        operands += [k, v]
    call = jax.ffi.ffi_call(
        "edgellm_decode_stack", out_shapes, input_output_aliases=aliases, vmap_method="sequential"
    )
    res = call(
        *operands,
        eps=np.float32(eps),
        scale=np.float32(d**-0.5 if scale is None else scale),
        activation=np.int32(ACTIVATIONS[activation]),
        windows=np.asarray(windows, np.int32),
        pdl=os.environ.get("EDGELLM_FN_PDL", "1") != "0",
    )
    return res[0], list(res[_FIXED_RETS::2]), list(res[_FIXED_RETS + 1 :: 2])


def decode_stack_ref(
    layers: Sequence[Mapping[str, jax.Array]],
    x: jax.Array,
    rope: jax.Array,
    start: jax.Array,
    context_lengths: jax.Array,
    k_caches: Sequence[jax.Array],
    v_caches: Sequence[jax.Array],
    *,
    windows: Sequence[int],
    eps: float = 1e-6,
    activation: str = "silu",
    scale: float | None = None,
    linear=gemv_ref,
    attend=decode_attention_ref,
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """``decode_stack`` as a loop of per-op calls (``gemv_ref`` / ``decode_attention_ref`` by
    default; pass the FFI ops as ``linear`` / ``attend`` to run them one custom call each)."""
    _check(layers, x, k_caches, v_caches, windows, activation)
    new_k, new_v = [], []
    for lp, k, v, window in zip(layers, k_caches, v_caches, windows, strict=True):
        qkv = linear(x, lp["wqkv"], norm_weight=lp["attn_norm"], eps=eps, bias=lp.get("bqkv"))
        attn, k, v = attend(
            qkv, k, v, rope, start, context_lengths,
            q_norm=lp.get("q_norm"), k_norm=lp.get("k_norm"), eps=eps, scale=scale, window=window,
        )  # fmt: skip
        x = linear(attn, lp["wo"], bias=lp.get("bo"), residual=x)
        h = linear(
            x, lp["w_gate_up"], norm_weight=lp["mlp_norm"], eps=eps, bias=lp.get("b_gate_up"),
            gated=True, activation=activation,
        )  # fmt: skip
        x = linear(h, lp["w_down"], bias=lp.get("b_down"), residual=x)
        new_k.append(k)
        new_v.append(v)
    return x, new_k, new_v
