"""Timing loop and the run matrix: systems × batch × context on one device, in one process.

Per row: a prefill of a ``context``-token prompt into a fresh cache (timed once, after one
untimed run that compiles), ``warmup`` untimed decode steps, then ``steps`` decode steps each
timed up to a device synchronization of its token; ``decode_ms`` is their median. Then, each from
a fresh prefill: the same ``steps`` issued back to back with one sync at the end
(``decode_b2b_ms``, per step), and where the system has one, its whole-generation device loop
(``decode_while_ms``: edgellm_fn's ``decode_while``). ``step_launches`` counts the kernel-
launching ops of one compiled step. The device limits (copy: a large device-to-device memcpy on
a GPU) are measured in the same run and every row carries them with its rooflines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import platform
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import numpy as np

from ..config import EngineConfig
from ..engine.sharding import check_tensor_parallel
from ..engine.xla import XlaEngine
from ..errors import InputError
from . import ceilings as roofline
from .presets import Preset, random_params
from .systems import NaiveRunner, Runner, XlaRunner

PEERS = ("hf", "hf-compile", "naive")
FIGURES = (
    "prefill_ms",
    "prefill_tokens_per_s",
    "decode_ms",
    "decode_ms_p10",
    "decode_ms_p90",
    "decode_b2b_ms",
    "decode_while_ms",
    "step_launches",
    "tokens_per_s",
    "roofline_fraction",
    "prefill_roofline_fraction",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSpec:
    """One benchmark invocation (the ``edgellm-fn bench`` flags).

    Attributes:
      preset: model shape and defaults.
      batches, contexts: the matrix.
      steps, warmup: timed and untimed decode steps per row.
      kv_capacity: KV slots per row.
      peers: subset of ``PEERS`` measured after edgellm_fn.
      dtype: weights, activations and KV dtype.
      compile_timeout_s: limit on hf-compile's compile + warm-up per batch.
      seed: PRNG seed of the weights and prompts.

    Raises:
      InputError: a flag outside its limits (the message names the flag and the limit).
    """

    preset: Preset
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    steps: int
    warmup: int
    kv_capacity: int
    peers: tuple[str, ...]
    dtype: str = "bfloat16"
    compile_timeout_s: float = 120.0
    seed: int = 0
    tensor_parallel: int = 1

    def __post_init__(self) -> None:
        if self.tensor_parallel != 1:
            if self.peers:
                raise InputError(
                    f"bench: --tensor-parallel {self.tensor_parallel} with --peers="
                    f"{','.join(self.peers)} (expected --peers ''); the peers run on one device"
                )
            check_tensor_parallel(self.preset.model, self.tensor_parallel, "bench")
        for flag, values in (("--batch", self.batches), ("--context", self.contexts)):
            if not values or min(values) < 1:
                raise InputError(f"bench: {flag}={list(values)} (expected integers >= 1)")
        if self.steps < 1 or self.warmup < 1:
            raise InputError(
                f"bench: --steps={self.steps} --warmup={self.warmup} (expected >= 1 each)"
            )
        unknown = [p for p in self.peers if p not in PEERS]
        if unknown:
            raise InputError(
                f"bench: --peers={','.join(self.peers)} has unknown {unknown} (expected a "
                f"comma-separated subset of {','.join(PEERS)})"
            )
        need = max(self.contexts) + self.warmup + self.steps
        if need > self.kv_capacity:
            raise InputError(
                f"bench: --context={max(self.contexts)} + --warmup={self.warmup} + "
                f"--steps={self.steps} needs {need} KV slots (expected <= "
                f"--kv-capacity={self.kv_capacity}); lower --steps or --context, or raise "
                "--kv-capacity"
            )


class CompileTimeout(Exception):
    """Compilation and warm-up ran past the limit."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raises ``CompileTimeout`` in the main thread after ``seconds`` (POSIX interval timer)."""
    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise CompileTimeout(f"did not compile and warm up within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def measure(
    runner: Runner, ids: np.ndarray, *, steps: int, warmup: int, limit_s: float | None = None
) -> dict:
    """Times one prefill and ``steps`` decode steps of ``runner`` (module docstring).

    ``limit_s`` bounds the untimed part (compiles and warm-up) with ``time_limit``.
    """
    with time_limit(limit_s):
        t0 = time.perf_counter()
        runner.sync(runner.start(ids))  # compiles prefill
        first_prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        token = runner.start(ids)
        runner.sync(token)
        prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(warmup):  # the first step compiles decode
            token = runner.step(token)
            runner.sync(token)
        warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        token = runner.step(token)
        runner.sync(token)
        times.append(time.perf_counter() - t0)
    launches = runner.step_launches(token)
    # Back to back: the same steps from a fresh prefill, one sync at the end.
    token = runner.start(ids)
    runner.sync(token)
    t0 = time.perf_counter()
    for _ in range(steps):
        token = runner.step(token)
    runner.sync(token)
    b2b_s = (time.perf_counter() - t0) / steps
    loop_s = runner.loop_seconds(ids, steps)
    b, s = ids.shape
    decode_ms = statistics.median(times) * 1e3
    return {
        "decode_b2b_ms": b2b_s * 1e3,
        "decode_while_ms": None if loop_s is None else loop_s / steps * 1e3,
        "step_launches": launches,
        "prefill_ms": prefill_s * 1e3,
        "prefill_tokens_per_s": b * s / prefill_s,
        "decode_ms": decode_ms,
        "decode_ms_p10": float(np.percentile(times, 10)) * 1e3,
        "decode_ms_p90": float(np.percentile(times, 90)) * 1e3,
        "tokens_per_s": b * 1e3 / decode_ms,
        "first_prefill_s": first_prefill_s,
        "warmup_s": warmup_s,
    }


def greedy_tokens(runner: Runner, ids: np.ndarray, steps: int) -> np.ndarray:
    """``[B, steps + 1]`` greedy tokens: the prefill's, then one per decode step."""
    token = runner.start(ids)
    out = [runner.numpy(token)]
    for _ in range(steps):
        token = runner.step(token)
        out.append(runner.numpy(token))
    return np.stack(out, 1)


def build_engine(spec: RunSpec) -> XlaEngine:
    """The xla engine of ``spec`` with random params drawn on the default device."""
    model = spec.preset.model
    cfg = EngineConfig.create(
        model,
        max_batch_size=max(spec.batches),
        max_input_len=max(spec.contexts),
        kv_capacity=spec.kv_capacity,
        dtype=spec.dtype,
        tensor_parallel=spec.tensor_parallel,
    )
    key = jax.random.PRNGKey(spec.seed)
    return XlaEngine(cfg, random_params(model, key, spec.dtype, tensor_parallel=cfg))


Factory = Callable[[int], Runner]


def make_runners(spec: RunSpec, engine: XlaEngine) -> list[tuple[str, str, Factory]]:
    """``(system, notes, factory(batch))`` for edgellm_fn and each requested peer, in order."""
    out: list[tuple[str, str, Factory]] = [
        (
            "edgellm_fn/xla",
            "prefill(); jitted embed+decode_step+argmax",
            lambda b: XlaRunner(engine, b),
        )
    ]
    if "naive" in spec.peers:
        out.append(("naive-jax", "edgellm_fn/bench/naive_jax.py", lambda b: NaiveRunner(engine, b)))
    if "hf" in spec.peers or "hf-compile" in spec.peers:
        import torch

        from .hf import HfCompileRunner, HfEagerRunner, build_hf_model, torch_device

        # Built on first use (after the JAX systems ran), so a failure lands in the hf rows.
        model = functools.cache(
            lambda: build_hf_model(spec.preset.hf_config, engine.config, engine.params)
        )
        where = f"torch {torch.__version__} on {torch_device()}"
        if torch_device() == "cpu":
            where += " (1 thread)"
        if "hf" in spec.peers:
            out.append(("hf-eager", f"{where}; DynamicCache", lambda b: HfEagerRunner(model(), b)))
        if "hf-compile" in spec.peers:
            out.append(
                (
                    "hf-compile",
                    f"{where}; StaticCache, eager prefill, compiled decode (reduce-overhead)",
                    lambda b: HfCompileRunner(model(), b, spec.kv_capacity),
                )
            )
    return out


def device_name() -> str:
    """The GPU's name, or the CPU model and core count."""
    d = jax.devices()[0]
    if d.platform == "gpu":
        return d.device_kind
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu: {cpu}, {os.cpu_count()} cores"


def run_matrix(spec: RunSpec, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Measures the limits, then every system × batch × context; returns the rows.

    A system that fails on a row (out of memory, compile timeout, an exception in a peer) gets
    a row whose ``status`` names the error, with ``null`` figures; the other rows still run.
    """
    limits = roofline.measure_limits()
    engine = build_engine(spec)
    cfg = engine.config
    common = {
        "model": spec.preset.name,
        "dtype": spec.dtype,
        "kv_capacity": spec.kv_capacity,
        "steps": spec.steps,
        "warmup": spec.warmup,
        "gpu": device_name(),
        "date": datetime.date.today().isoformat(),
        "jax": jax.__version__,
        "tensor_parallel": spec.tensor_parallel,
        **limits,
    }
    rows = []
    for system, notes, factory in make_runners(spec, engine):
        failed = None
        for batch in spec.batches:
            runner = None
            for context in spec.contexts:
                row = {"system": system, "batch": batch, "context": context, "notes": notes}
                row.update(common)
                row.update(
                    roofline.rooflines(
                        cfg.model,
                        batch=batch,
                        context=context,
                        dtype=cfg.dtype,
                        kv_dtype=cfg.kv_dtype,
                        limits=limits,
                    )
                )
                # Same prompt for every system of a (batch, context) cell.
                rng = np.random.default_rng([spec.seed, batch, context])
                ids = rng.integers(0, cfg.model.vocab_size, (batch, context), dtype=np.int32)
                limit = spec.compile_timeout_s if system == "hf-compile" else None
                try:
                    if failed:
                        raise RuntimeError(f"skipped after an earlier failure ({failed})")
                    if runner is None:
                        runner = factory(batch)
                    row.update(
                        measure(runner, ids, steps=spec.steps, warmup=spec.warmup, limit_s=limit)
                    )
                    row["status"] = "ok"
                    row["roofline_fraction"] = row["roofline_ms"] / row["decode_ms"]
                    row["prefill_roofline_fraction"] = (
                        row["prefill_roofline_ms"] / row["prefill_ms"]
                    )
                except Exception as e:  # recorded in the row, never hidden
                    row.update(_failed(e))
                    if isinstance(e, CompileTimeout):
                        failed = row["status"]
                rows.append(row)
                if on_row:
                    on_row(row)
            del runner
    return rows


def _failed(e: BaseException) -> dict:
    msg = str(e).splitlines()[0][:300] if str(e) else ""
    return {"status": f"failed: {type(e).__name__}: {msg}", **dict.fromkeys(FIGURES)}
