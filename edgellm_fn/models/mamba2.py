"""The Mamba2 mixer in JAX (NemotronH, and the shape Bamba/FalconH1 layers share).

Per layer params (``[out, in]`` as in the checkpoint)::

    {"in_proj": [I + conv_dim + nh, H], "in_proj_b": [...]?, "conv_w": [conv_dim, K],
     "conv_b": [conv_dim]?, "dt_bias": [nh], "A_log": [nh], "D": [nh], "gate_norm": [I],
     "out_proj": [H, I], "out_proj_b": [H]?}

Data flow of one step (``I = nh * hd``, ``conv_dim = I + 2 * g * N``)::

    h ─ in_proj ─┬─ z ────────────────────────────────────────────┐
                 ├─ (x, B, C) ─ causal conv (+ cached K-1 inputs) ─ act ─┐
                 └─ dt ─ softplus(dt + dt_bias) ──────────────────┐      │
                              SSD chunked scan (prefill) / one step (decode) ─ y + D x
                                                                   gated RMSNorm(y, z) ─ out_proj

Ragged rows: a row's positions past its ``n_new`` valid tokens get ``dt = 0``, so their state
update is the identity (``exp(0 * A) = 1``, ``dt * B x = 0``), and the conv state is taken from
the row's last valid inputs::

    conv input:  [ c0 c1 c2 | t0 t1 t2 pad pad ]   (K = 4: 3 cached, n_new = 3)
    new state:             [ t0 t1 t2 ]           = positions n_new .. n_new + K - 2
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ..hybrid_config import MambaConfig
from .llama import linear

Params = dict[str, Any]

CONV_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def causal_conv(
    mc: MambaConfig, lp: Params, xbc: jax.Array, state: jax.Array, n_new: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Depthwise causal conv over ``xbc`` ``[B, S, conv_dim]`` continuing ``state``.

    Args:
      state: ``[B, conv_dim, K-1]`` the previous inputs (zeros for an empty row).
      n_new: ``[B]`` int32 valid tokens of each row in this step.

    Returns:
      ``(activated [B, S, conv_dim] in xbc.dtype, new state [B, conv_dim, K-1])``.
    """
    k = mc.conv_kernel
    s = xbc.shape[1]
    full = jnp.concatenate([jnp.swapaxes(state, 1, 2).astype(xbc.dtype), xbc], axis=1)
    w = lp["conv_w"].astype(jnp.float32)  # [C, K]; w[:, K-1] multiplies the current token
    fullf = full.astype(jnp.float32)
    out = sum(fullf[:, j : j + s, :] * w[:, j] for j in range(k))
    if "conv_b" in lp:
        out = out + lp["conv_b"].astype(jnp.float32)
    out = CONV_ACTIVATIONS[mc.activation](out).astype(xbc.dtype)
    idx = n_new[:, None] + jnp.arange(k - 1, dtype=jnp.int32)[None, :]  # [B, K-1]
    new_state = jnp.take_along_axis(full, idx[:, :, None], axis=1)
    return out, jnp.swapaxes(new_state, 1, 2).astype(state.dtype)


def ssd_step(
    h0: jax.Array, x: jax.Array, dt: jax.Array, a: jax.Array, b: jax.Array, c: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One recurrent update (decode): ``h = exp(dt A) h + dt B x``, ``y = C h``.

    Heads are split as ``(g, r)``: group ``g``'s B and C serve its ``r = nh / g`` heads.

    Args (float32): h0 ``[B, g, r, hd, N]``; x ``[B, g, r, hd]``; dt ``[B, g, r]``;
      a ``[g, r]``; b, c ``[B, g, N]``.

    Returns:
      ``(y [B, g, r, hd], h [B, g, r, hd, N])``.
    """
    decay = jnp.exp(dt * a)[..., None, None]
    h = h0 * decay + (dt[..., None] * x)[..., None] * b[:, :, None, None, :]
    return jnp.einsum("bgrpn,bgn->bgrp", h, c), h


def ssd_chunked(
    h0: jax.Array,
    x: jax.Array,
    dt: jax.Array,
    a: jax.Array,
    b: jax.Array,
    c: jax.Array,
    chunk: int,
) -> tuple[jax.Array, jax.Array]:
    """The SSD scan of a whole step, chunk by chunk (prefill).

    Within a chunk the output is an attention-like product ``C_l . B_s`` (per group) masked by
    the per-head decays ``exp(sum_{s<k<=l} dt_k A)``; between chunks the state is carried by a
    ``lax.scan``. Heads are split as ``(g, r)`` as in ``ssd_step``.

    Args (float32): h0 ``[B, g, r, hd, N]``; x ``[B, S, g, r, hd]``; dt ``[B, S, g, r]`` (0 at
      padded positions: they leave the state unchanged); a ``[g, r]``; b, c ``[B, S, g, N]``.

    Returns:
      ``(y [B, S, g, r, hd], final state [B, g, r, hd, N])``.
    """
    bsz, s = x.shape[:2]
    pad = (-s) % chunk
    if pad:
        x, dt, b, c = (
            jnp.pad(t, [(0, 0), (0, pad)] + [(0, 0)] * (t.ndim - 2)) for t in (x, dt, b, c)
        )
    n = (s + pad) // chunk

    def chunks(t):
        return t.reshape(bsz, n, chunk, *t.shape[2:])

    xdt = chunks(x * dt[..., None])  # [B, c, L, g, r, hd]
    bc, cc = chunks(b), chunks(c)  # [B, c, L, g, N]
    da = jnp.moveaxis(chunks(dt * a), 2, -1)  # [B, c, g, r, L]
    cum = jnp.cumsum(da, axis=-1)
    # seg[l, s] = sum of da over (s, l]: a masked cumsum (stable, no cum[l] - cum[s]).
    lower = jnp.tril(jnp.ones((chunk, chunk), bool), -1)
    seg = jnp.cumsum(jnp.where(lower, da[..., :, None], 0.0), axis=-2)
    seg = jnp.where(jnp.tril(jnp.ones((chunk, chunk), bool)), seg, -jnp.inf)
    scores = jnp.einsum("bclgn,bcsgn->bcgls", cc, bc)[:, :, :, None] * jnp.exp(seg)
    y_diag = jnp.einsum("bcgrls,bcsgrp->bclgrp", scores, xdt)
    to_end = jnp.exp(cum[..., -1:] - cum)  # [B, c, g, r, L] decay from each token to chunk end
    states = jnp.einsum("bclgn,bcgrl,bclgrp->bcgrpn", bc, to_end, xdt)
    chunk_decay = jnp.exp(cum[..., -1])  # [B, c, g, r]

    def carry(h, inp):
        st, dec = inp
        return h * dec[..., None, None] + st, h

    final, starts = jax.lax.scan(
        carry, h0, (jnp.moveaxis(states, 1, 0), jnp.moveaxis(chunk_decay, 1, 0))
    )
    starts = jnp.moveaxis(starts, 0, 1)  # [B, c, g, r, hd, N] state entering each chunk
    y_off = jnp.einsum("bclgn,bcgrpn->bclgrp", cc, starts)
    y_off = y_off * jnp.moveaxis(jnp.exp(cum), -1, 2)[..., None]
    y = (y_diag + y_off).reshape(bsz, n * chunk, *x.shape[2:])[:, :s]
    return y, final


def gated_rms_norm(y: jax.Array, z: jax.Array, weight: jax.Array, mc: MambaConfig) -> jax.Array:
    """``weight * rmsnorm_groups(y * silu(z))`` in float32 (groups of ``norm_group_size``)."""
    g = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
    shape = g.shape
    g = g.reshape(*shape[:-1], shape[-1] // mc.norm_group_size, mc.norm_group_size)
    g = g * jax.lax.rsqrt(jnp.mean(g * g, axis=-1, keepdims=True) + mc.norm_eps)
    return weight.astype(jnp.float32) * g.reshape(shape)


def mixer(
    mc: MambaConfig,
    lp: Params,
    h: jax.Array,
    ssm: jax.Array,
    conv: jax.Array,
    n_new: jax.Array,
    empty: jax.Array,
    *,
    single_step: bool,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Mamba2 mixer over a step; returns ``(out [B, S, H], ssm, conv)``.

    Args:
      h: ``[B, S, H]`` normalised input (model dtype), right-padded rows.
      ssm, conv: the layer's states (``state/recurrent.py``).
      n_new: ``[B]`` int32 valid tokens of each row in this step.
      empty: ``[B]`` bool rows holding no tokens before this step: they start from zeros.
      single_step: static; the decode update (``S == 1``, no dt clamp) instead of the chunked
        scan (with the ``dt_limit`` clamp), as transformers and ``mamba_ssm`` do.
    """
    bsz, s, _ = h.shape
    nh, hd, n, g = mc.num_heads, mc.head_dim, mc.state_size, mc.n_groups
    inter = mc.intermediate_size
    proj = linear(h, lp["in_proj"], lp.get("in_proj_b"))
    z, xbc, dt = jnp.split(proj, [inter, inter + mc.conv_dim], axis=-1)
    conv = jnp.where(empty[:, None, None], jnp.zeros_like(conv), conv)
    h0 = jnp.where(empty[:, None, None, None], 0.0, ssm.astype(jnp.float32))
    xbc, conv = causal_conv(mc, lp, xbc, conv, n_new)
    x, b, c = jnp.split(xbc.astype(jnp.float32), [inter, inter + g * n], axis=-1)
    r = nh // g  # heads per group: heads [g * r, (g + 1) * r) share group g's B and C
    x = x.reshape(bsz, s, g, r, hd)
    b, c = b.reshape(bsz, s, g, n), c.reshape(bsz, s, g, n)
    dt = jax.nn.softplus(dt.astype(jnp.float32) + lp["dt_bias"].astype(jnp.float32))
    dt = dt.reshape(bsz, s, g, r)
    a = -jnp.exp(lp["A_log"].astype(jnp.float32)).reshape(g, r)
    h0 = h0.reshape(bsz, g, r, hd, n)
    if single_step:
        y, h1 = ssd_step(h0, x[:, 0], dt[:, 0], a, b[:, 0], c[:, 0])
        y = y[:, None]
    else:
        dt = jnp.clip(dt, *mc.dt_limit)
        valid = jnp.arange(s, dtype=jnp.int32)[None, :] < n_new[:, None]
        dt = jnp.where(valid[..., None, None], dt, 0.0)  # padded steps leave the state as is
        y, h1 = ssd_chunked(h0, x, dt, a, b, c, mc.chunk_size)
    y = y + lp["D"].astype(jnp.float32).reshape(g, r)[..., None] * x
    y = gated_rms_norm(y.reshape(bsz, s, inter), z, lp["gate_norm"], mc).astype(h.dtype)
    out = linear(y, lp["out_proj"], lp.get("out_proj_b"))
    return out, h1.reshape(ssm.shape).astype(ssm.dtype), conv
