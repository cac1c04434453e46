"""Device limits measured in the run (copy bandwidth, bf16 matmul rate) and the rooflines.

Decode is memory-bound: one step must read every weight once plus each row's valid KV::

    decode_roofline_s  = (weight_bytes + kv_bytes) / copy_bandwidth
    weight_bytes       = itemsize * (L * per_layer + H (final norm) + H*V (lm_head, the
                         embedding when tied) + B*H (embedding rows of this step's tokens))
    kv_bytes           = kv_itemsize * 2 (k, v) * L * B * Hkv * D * context

Prefill is compute-bound for long prompts::

    prefill_flops      = 2 * L * matmul_params * B*S + 2 * H*V * B (last-token logits)
                         + L * 4 * B * Hq * D * S*(S+1)/2 (causal QK^T and PV)
    prefill_roofline_s = prefill_flops / matmul_rate
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

from ..config import ModelConfig
from ..dtypes import dtype as lookup_dtype

# (copy bytes, matmul n) by platform: on a GPU 4 GiB, many times any L2; the CPU sizes keep the
# smoke run short.
LIMIT_SIZES = {"gpu": (4 << 30, 8192), "cpu": (64 << 20, 512)}


def layer_params(cfg: ModelConfig) -> tuple[int, int]:
    """Returns ``(matmul_params, other_params)`` of one decoder layer."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv = cfg.q_size + 2 * cfg.kv_size
    matmul = h * qkv + cfg.q_size * h + h * 2 * f + f * h
    other = 2 * h  # attn_norm, mlp_norm
    other += qkv if cfg.qkv_bias else 0
    other += h if cfg.o_bias else 0
    other += 2 * d if cfg.qk_norm else 0
    other += 2 * f + h if cfg.mlp_bias else 0
    return matmul, other


def weight_bytes_per_decode_step(cfg: ModelConfig, batch: int, dtype: str) -> int:
    """Bytes of weights one decode step of ``batch`` rows must read (module docstring)."""
    matmul, other = layer_params(cfg)
    h, v = cfg.hidden_size, cfg.vocab_size
    return lookup_dtype(dtype).itemsize * (
        cfg.num_hidden_layers * (matmul + other) + h + h * v + batch * h
    )


def kv_bytes(cfg: ModelConfig, batch: int, tokens: int, kv_dtype: str) -> int:
    """Bytes of K and V of ``tokens`` valid positions in every layer and row."""
    per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
    return lookup_dtype(kv_dtype).itemsize * per_token * batch * tokens


def prefill_flops(cfg: ModelConfig, batch: int, tokens: int) -> float:
    """FLOPs of a prefill of ``tokens`` per row with logits for the last token only."""
    matmul, _ = layer_params(cfg)
    dense = 2.0 * cfg.num_hidden_layers * matmul * batch * tokens
    head = 2.0 * cfg.hidden_size * cfg.vocab_size * batch
    per_head = 4.0 * cfg.head_dim * tokens * (tokens + 1) / 2
    attn = cfg.num_hidden_layers * batch * cfg.num_attention_heads * per_head
    return dense + head + attn


def median_seconds(fn, args: tuple = (), repeats: int = 5) -> float:
    """Median wall seconds of ``fn(*args)`` (blocked) over ``repeats`` calls after a warm-up."""
    jax.block_until_ready(fn(*args))  # compile + warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_copy_bandwidth(nbytes: int, repeats: int = 10) -> tuple[float, str]:
    """Device-to-device copy bandwidth in bytes/s (bytes read + written over the median time)
    and how it was measured.

    On a GPU: ``cudaMemcpyAsync`` device to device between two JAX buffers, timed by CUDA
    events (cuda-python's runtime bindings) — the honest ceiling; a jitted copy reaches only
    about two thirds of it. Elsewhere: a jitted ``jnp.copy``.

    Raises:
      RuntimeError: a CUDA call failed, or the jitted copy returned its input.
    """
    x = jnp.arange(nbytes // 4, dtype=jnp.uint32)
    if x.devices().pop().platform == "gpu":
        return _cuda_memcpy_bandwidth(x, repeats), "cudaMemcpyAsync D2D, CUDA events"
    copy = jax.jit(jnp.copy)
    y = copy(x)
    if y.unsafe_buffer_pointer() == x.unsafe_buffer_pointer():
        raise RuntimeError("measure_copy_bandwidth: jnp.copy returned its input; nothing copied")
    del y
    return 2 * x.nbytes / median_seconds(copy, (x,), repeats), "jitted jnp.copy"


def _cuda_memcpy_bandwidth(x: jax.Array, repeats: int) -> float:
    try:
        from cuda.bindings import runtime as rt
    except ImportError:  # cuda-python before 12.6
        from cuda import cudart as rt

    def ok(result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if err != rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"measure_copy_bandwidth: CUDA error {err}")
        return rest[0] if rest else None

    y = jnp.zeros_like(x)
    jax.block_until_ready((x, y))
    src, dst, n = x.unsafe_buffer_pointer(), y.unsafe_buffer_pointer(), x.nbytes
    stream = ok(rt.cudaStreamCreate())
    start, stop = ok(rt.cudaEventCreate()), ok(rt.cudaEventCreate())
    d2d = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
    times = []
    try:
        for i in range(repeats + 2):  # two warm-ups
            ok(rt.cudaEventRecord(start, stream))
            ok(rt.cudaMemcpyAsync(dst, src, n, d2d, stream))
            ok(rt.cudaEventRecord(stop, stream))
            ok(rt.cudaEventSynchronize(stop))
            if i >= 2:
                times.append(ok(rt.cudaEventElapsedTime(start, stop)) / 1e3)
    finally:
        rt.cudaEventDestroy(start)
        rt.cudaEventDestroy(stop)
        rt.cudaStreamDestroy(stream)
    return 2 * n / statistics.median(times)


def measure_matmul_rate(n: int, repeats: int = 10) -> float:
    """bf16 ``[n, n] @ [n, n]`` rate in FLOP/s (``2 n^3`` over the median time)."""
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.bfloat16)
    b = jax.random.normal(k2, (n, n), jnp.bfloat16)
    return 2.0 * n**3 / median_seconds(jax.jit(jnp.matmul), (a, b), repeats)


def measure_limits(copy_bytes: int | None = None, matmul_n: int | None = None) -> dict:
    """Both limits on the default device; sizes default by platform (``LIMIT_SIZES``)."""
    platform = jax.devices()[0].platform
    default_bytes, default_n = LIMIT_SIZES.get(platform, LIMIT_SIZES["gpu"])
    copy_bytes = copy_bytes or default_bytes
    matmul_n = matmul_n or default_n
    copy_bps, copy_method = measure_copy_bandwidth(copy_bytes)
    return {
        "copy_bytes": copy_bytes,
        "copy_gbps": copy_bps / 1e9,
        "copy_method": copy_method,
        "matmul_n": matmul_n,
        "matmul_tflops": measure_matmul_rate(matmul_n) / 1e12,
    }


def rooflines(
    cfg: ModelConfig, *, batch: int, context: int, dtype: str, kv_dtype: str, limits: dict
) -> dict:
    """Decode and prefill rooflines (ms) of one row from the measured ``limits``."""
    w = weight_bytes_per_decode_step(cfg, batch, dtype)
    kv = kv_bytes(cfg, batch, context, kv_dtype)
    flops = prefill_flops(cfg, batch, context)
    return {
        "weight_bytes": w,
        "kv_bytes": kv,
        "roofline_ms": (w + kv) / (limits["copy_gbps"] * 1e9) * 1e3,
        "prefill_flops": flops,
        "prefill_roofline_ms": flops / (limits["matmul_tflops"] * 1e12) * 1e3,
    }
