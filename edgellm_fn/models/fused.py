"""The Llama-family decode step on fused kernels (DESIGN section 8), and when it applies.

Per layer, four GEMVs and one attention op, each streaming its bytes once::

    qkv  = gemv(x, wqkv, norm=attn_norm, bias)          RMSNorm -> QKV (+bias)
    attn = decode_attention(qkv, k, v, rope, ...)        q/k norm, RoPE, KV append, split-KV
    x    = gemv(attn, wo, bias, residual=x)              O projection + residual
    h    = gemv(x, w_gate_up, norm=mlp_norm, gated)      RMSNorm -> gate/up -> act(gate) * up
    x    = gemv(h, w_down, bias, residual=x)             down projection + residual

then ``gemv(x_last, lm_head, norm=final_norm, out_dtype=float32)``. ``ffi.gemv_ref`` and
``ffi.decode_attention_ref`` are the reference path of ``llama.py`` with the same signatures, so
``use_kernels=False`` gives the reference numbers through the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ..config import EngineConfig, ModelConfig
from ..ffi.decode_attention import decode_attention, decode_attention_ref
from ..ffi.gemv import ACTIVATIONS, MAX_ROWS, gemv, gemv_ref
from .llama import Params


def kernel_support(cfg: EngineConfig, batch: int, platform: str) -> str | None:
    """Why the fused decode path cannot run ``cfg`` at ``batch`` on ``platform``; None if it can.

    The CPU handlers take any float dtype; the CUDA handlers need 16-bit weights and caches in
    one dtype, head_dim a multiple of 8 up to 256, at most 8 query heads per kv head, at most 16
    rows, and projection widths that are multiples of 8 (16-byte loads). No path applies LoRA
    adapters: an engine with a LoRA bank always takes the reference path.
    """
    m = cfg.model
    if cfg.deployment.max_lora_rank:
        return (
            f"LoRA adapters (max_lora_rank={cfg.deployment.max_lora_rank}) have no fused kernel; "
            "the reference path adds each row's adapter"
        )
    if m.hidden_act not in ACTIVATIONS:
        return f"hidden_act={m.hidden_act!r} has no fused kernel"
    unfused = [
        name
        for name, on in (
            ("norm_offset (RMSNorm times 1 + weight)", m.norm_offset != 0.0),
            ("sandwich_norms", m.sandwich_norms),
            ("embed_scale", m.embed_scale != 1.0),
            ("attention soft-capping", m.attn_softcap is not None),
            ("final logit soft-capping", m.final_softcap is not None),
            ("a local rope for sliding layers", m.local_rope is not None),
        )
        if on
    ]
    if unfused:
        return f"{m.family}: {', '.join(unfused)} have no fused kernel"
    if cfg.kv_dtype != cfg.dtype:
        return f"kv_dtype={cfg.kv_dtype} differs from dtype={cfg.dtype}"
    if platform != "gpu":
        return None
    if cfg.dtype not in ("bfloat16", "float16"):
        return f"dtype={cfg.dtype} (the CUDA kernels take bfloat16 or float16)"
    if m.head_dim % 8 or m.head_dim > 256:
        return f"head_dim={m.head_dim} (expected a multiple of 8 up to 256)"
    if m.num_attention_heads // m.num_key_value_heads > 8:
        return "more than 8 query heads per kv head"
    if batch > MAX_ROWS:
        return f"batch={batch} (expected <= {MAX_ROWS})"
    if any(k % 8 for k in (m.hidden_size, m.q_size, m.intermediate_size)):
        return "a projection's input width is not a multiple of 8"
    return None


#: Rows up to which every fused GEMV beats XLA's (measured on an H200, BENCHMARKS.md); past it
#: the normed projections (QKV, gate/up) use the XLA path and attention stays fused.
GEMV_ROWS = 2
#: Rows up to which the O and down projections (+ residual; few output tiles, long K) still
#: beat cuBLAS on the tensor-core GEMV (at 16 rows cuBLAS wins again).
RESIDUAL_GEMV_ROWS = 8


def _ops(use_kernels: bool):
    return (gemv, decode_attention) if use_kernels else (gemv_ref, decode_attention_ref)


def decode_layers(
    cfg: ModelConfig,
    params: Params,
    x: jax.Array,
    rope: jax.Array,
    start: jax.Array,
    context_lengths: jax.Array,
    k_caches: Sequence[jax.Array],
    v_caches: Sequence[jax.Array],
    *,
    use_kernels: bool = True,
    deepstack: Sequence[jax.Array] = (),
) -> tuple[jax.Array, list[jax.Array], list[jax.Array]]:
    """Every decoder layer for one new token per row.

    Args:
      x: ``[B, H]`` embedded new tokens.
      rope: ``[1 or B, C, rot]`` float32 table.
      start: ``[B]`` int32 slot of the new token; context_lengths: ``[B]`` valid slots after it.
      k_caches, v_caches: per layer ``[B, Hkv, C, D]``.
      deepstack: ``[B, H]`` added after layer i for the i-th entry (Qwen3-VL).

    Returns:
      ``(hidden [B, H] before the final norm, k_caches, v_caches)``.
    """
    linear, attend = _ops(use_kernels)
    residual_linear = linear if x.shape[0] <= RESIDUAL_GEMV_ROWS else gemv_ref
    if x.shape[0] > GEMV_ROWS:
        linear = gemv_ref
    eps = cfg.rms_norm_eps
    new_k, new_v = [], []
    for i, lp in enumerate(params["layers"]):
        qkv = linear(x, lp["wqkv"], norm_weight=lp["attn_norm"], eps=eps, bias=lp.get("bqkv"))
        attn, k, v = attend(
            qkv,
            k_caches[i],
            v_caches[i],
            rope,
            start,
            context_lengths,
            q_norm=lp.get("q_norm"),
            k_norm=lp.get("k_norm"),
            eps=eps,
            window=cfg.sliding_windows[i],
            scale=cfg.attn_scale,
        )
        x = residual_linear(attn, lp["wo"], bias=lp.get("bo"), residual=x)
        h = linear(
            x,
            lp["w_gate_up"],
            norm_weight=lp["mlp_norm"],
            eps=eps,
            bias=lp.get("b_gate_up"),
            gated=True,
            activation=cfg.hidden_act,
        )
        x = residual_linear(h, lp["w_down"], bias=lp.get("b_down"), residual=x)
        if i < len(deepstack):
            x = x + deepstack[i].astype(x.dtype)
        new_k.append(k)
        new_v.append(v)
    return x, new_k, new_v


def head_logits(
    cfg: ModelConfig, params: Params, hidden: jax.Array, *, use_kernels: bool = True
) -> jax.Array:
    """Final norm and lm_head of ``hidden [..., H]`` as one GEMV; float32 ``[..., V]``."""
    linear, _ = _ops(use_kernels)
    if hidden.size // hidden.shape[-1] > GEMV_ROWS:
        linear = gemv_ref
    head = params.get("lm_head", params["embed"])
    return linear(
        hidden, head, norm_weight=params["final_norm"], eps=cfg.rms_norm_eps, out_dtype=jnp.float32
    )
