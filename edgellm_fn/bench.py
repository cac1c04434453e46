"""``edgellm-fn bench``: prefill tokens/s and decode ms/token of an engine on synthetic inputs.

Timings synchronize on the device (``block_until_ready``) and exclude compilation (one warm-up
of each shape). Decode is the median over ``decode_steps`` steps.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time

import jax
import numpy as np

from .engine.protocol import Engine
from .runtime import steps
from .state.resources import create_state


def bench_engine(engine: Engine, *, batch: int, prompt_len: int, decode_steps: int) -> dict:
    """Times one prefill of ``prompt_len`` tokens per row and ``decode_steps`` decode steps.

    Returns:
      A result row: ``prefill_ms``, ``prefill_tokens_per_s``, ``decode_ms`` (median per step),
      ``tokens_per_s`` (batch * 1000 / decode_ms) and the run's context.
    """
    cfg = engine.config
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.model.vocab_size, (batch, prompt_len), dtype=np.int32)
    lengths = np.full(batch, prompt_len)
    x = steps.embed(engine, ids)
    token = steps.embed(engine, ids[:, :1])

    def run_prefill():
        state = create_state(cfg, batch)
        t0 = time.perf_counter()
        state = steps.prefill(engine, state, x, lengths)
        jax.block_until_ready(state)
        return state, time.perf_counter() - t0

    run_prefill()  # compile
    state, prefill_s = run_prefill()
    state = steps.decode(engine, state, token)  # compile
    jax.block_until_ready(state)
    times = []
    for _ in range(decode_steps):
        t0 = time.perf_counter()
        state = steps.decode(engine, state, token)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t0)
    decode_ms = statistics.median(times) * 1e3
    return {
        "system": f"edgellm_fn/{getattr(engine, 'provider', type(engine).__name__)}",
        "model": cfg.model.architecture,
        "batch": batch,
        "context": prompt_len,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tokens_per_s": batch * prompt_len / prefill_s,
        "decode_ms": decode_ms,
        "tokens_per_s": batch * 1e3 / decode_ms,
        "device": str(jax.devices()[0].device_kind),
        "host": platform.processor() or platform.machine(),
        "date": datetime.date.today().isoformat(),
    }
