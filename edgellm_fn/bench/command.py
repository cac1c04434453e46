"""``edgellm-fn bench``: decode and prefill against measured device limits, peers in the same run.

- ``bench_presets``: model shapes (Hugging Face config dicts) and random params on the device.
- ``bench_roofline``: copy bandwidth and matmul rate measured in the run; roofline arithmetic.
- ``bench_systems`` / ``bench_hf``: the runners (edgellm_fn xla, naive JAX, transformers).
- ``bench_run``: the timing loop and the matrix; ``bench_report``: JSON, plot, table.

This module holds the command (flags and ``run_bench``) and ``bench_engine``, which times one
engine loaded from a directory (``--model DIR``). The CLI parser imports it: keep it light.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.defaults import DEFAULTS
from ..engine.providers import CHOICES, PROVIDER_HELP

if TYPE_CHECKING:  # importing this package stays light (the CLI parser imports it)
    from ..engine.protocol import Engine


def bench_engine(engine: Engine, *, batch: int, prompt_len: int, decode_steps: int) -> dict:
    """Times one prefill of ``prompt_len`` tokens per row and ``decode_steps`` greedy steps.

    Returns:
      A result row: ``prefill_ms``, ``prefill_tokens_per_s``, ``decode_ms`` (median per step),
      ``tokens_per_s`` (batch * 1000 / decode_ms) and the run's context.
    """
    import jax
    import numpy as np

    from .run import measure
    from .systems import XlaRunner

    cfg = engine.config
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.model.vocab_size, (batch, prompt_len), dtype=np.int32)
    runner = XlaRunner(engine, batch, system=f"edgellm_fn/{engine.provider}")
    row = {
        "system": runner.system,
        "model": cfg.model.architecture,
        "batch": batch,
        "context": prompt_len,
        **measure(runner, ids, steps=decode_steps, warmup=2),
        "device": str(jax.devices()[0].device_kind),
        "tensor_parallel": cfg.tensor_parallel,
        "host": platform.processor() or platform.machine(),
        "date": datetime.date.today().isoformat(),
    }
    return row


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """Adds the ``bench`` flags; preset defaults apply to every flag left unset."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="llama-3.2-1b | qwen2.5-0.5b | qwen3-1.7b | tiny (CPU)")
    src.add_argument("--model", help="checkpoint or engine directory (edgellm_fn only)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (preset default: 1 8)")
    p.add_argument("--context", type=int, nargs="+", help="tokens prefilled before decoding")
    p.add_argument("--steps", type=int, help="timed decode steps per row (median reported)")
    p.add_argument("--warmup", type=int, help="untimed decode steps before timing")
    p.add_argument(
        "--kv-capacity",
        type=int,
        help=f"KV slots per row (default: the preset's; {DEFAULTS['kv_capacity']} with --model)",
    )
    p.add_argument(
        "--peers",
        help="comma-separated subset of hf,hf-compile,naive ('' for none; default: preset's)",
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--compile-timeout", type=float, default=120.0, help="hf-compile limit, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="JSON rows (rewritten after every row); PNG plot beside it")
    p.add_argument("--plot", help="PNG path (default: --output with .png)")
    p.add_argument("--provider", choices=CHOICES, default=None, help=PROVIDER_HELP)
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULTS["max_batch_size"],
        help="--model: max batch size (default: %(default)s)",
    )
    p.add_argument(
        "--max-input-len",
        type=int,
        default=DEFAULTS["max_input_len"],
        help="--model: longest prompt (default: %(default)s)",
    )
    p.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        metavar="N",
        help="xla: split the model over the first N devices (engine/sharding.py; needs --peers '' "
        "with --preset) (default: %(default)s)",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Runs ``bench`` for ``--preset`` (the matrix with peers) or ``--model`` (one engine)."""
    if args.model:
        return _run_model(args)
    from . import report
    from .presets import get_preset
    from .run import RunSpec, run_matrix

    preset = get_preset(args.preset)
    peers = args.peers if args.peers is not None else preset.peers
    spec = RunSpec(
        preset=preset,
        batches=tuple(args.batch or preset.batches),
        contexts=tuple(args.context or preset.contexts),
        steps=args.steps if args.steps is not None else preset.steps,
        warmup=args.warmup if args.warmup is not None else preset.warmup,
        kv_capacity=args.kv_capacity or preset.kv_capacity,
        peers=tuple(p for p in peers.split(",") if p),
        dtype=args.dtype or "bfloat16",
        compile_timeout_s=args.compile_timeout,
        seed=args.seed,
        tensor_parallel=args.tensor_parallel,
    )
    rows: list[dict] = []

    def on_row(row: dict) -> None:
        rows.append(row)
        if args.output:
            report.write_json(rows, args.output)
        print(
            f"  {row['system']} B={row['batch']} ctx={row['context']}: "
            f"decode {row['decode_ms'] or float('nan'):.3f} ms  {row['status']}",
            file=sys.stderr,
            flush=True,
        )

    run_matrix(spec, on_row=on_row)
    plot_path = args.plot or (str(Path(args.output).with_suffix(".png")) if args.output else None)
    if plot_path and not report.plot(rows, plot_path):
        print("plot skipped: matplotlib is not installed (pip install matplotlib)")
    print(report.table(rows))
    return 0


def _run_model(args: argparse.Namespace) -> int:
    from ..engine.loading import load_engine
    from ..errors import InputError
    from . import report

    if args.peers:
        raise InputError("bench: --peers needs --preset (peers are built from a preset's config)")
    engine = load_engine(
        args.model,
        provider=args.provider,
        max_batch_size=args.max_batch,
        max_input_len=args.max_input_len,
        kv_capacity=args.kv_capacity or DEFAULTS["kv_capacity"],
        dtype=args.dtype,
        tensor_parallel=args.tensor_parallel,
    )
    steps = args.steps if args.steps is not None else 50
    cap = engine.config.kv_capacity
    rows = []
    for context in args.context or [128]:
        if context + steps + 2 > cap:
            raise InputError(
                f"bench: --context={context} + --steps={steps} (+ 2 warm-up) needs "
                f"{context + steps + 2} KV slots (expected <= --kv-capacity={cap}); lower "
                "--steps or --context, or raise --kv-capacity"
            )
        for b in args.batch or [1]:
            rows.append(bench_engine(engine, batch=b, prompt_len=context, decode_steps=steps))
    if args.output:
        report.write_json(rows, args.output)
    print(f"{'system':18} {'B':>2} {'ctx':>5} {'prefill tok/s':>13} {'decode ms':>9} {'tok/s':>8}")
    for r in rows:
        print(
            f"{r['system']:18} {r['batch']:2d} {r['context']:5d} "
            f"{r['prefill_tokens_per_s']:13.1f} {r['decode_ms']:9.3f} {r['tokens_per_s']:8.1f}"
        )
    return 0
