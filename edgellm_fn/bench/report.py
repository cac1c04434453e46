"""Benchmark output: the JSON rows, a PNG plot (decode ms vs roofline) and the printed table.

Merging the result files of several runs (one per preset process of ``benchmarks/run_gpu.sh``)::

    python -m edgellm_fn.bench_report --output all.json --plot all.png a.json b.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

# Every row has these keys (failed rows hold None in the figures and say why in ``status``).
REQUIRED = (
    "system",
    "model",
    "batch",
    "context",
    "prefill_ms",
    "decode_ms",
    "tokens_per_s",
    "roofline_ms",
    "roofline_fraction",
    "prefill_roofline_ms",
    "prefill_roofline_fraction",
    "gpu",
    "date",
    "copy_gbps",
    "matmul_tflops",
    "status",
)


def write_json(rows: Sequence[dict], path: str | Path) -> None:
    """Writes ``rows`` as a JSON list (replaced whole, so a killed run leaves valid JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(list(rows), indent=2) + "\n")
    tmp.replace(path)


def read_json(paths: Sequence[str | Path]) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        rows.extend(json.loads(Path(p).read_text()))
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def table(rows: Sequence[dict]) -> str:
    """A fixed-width table of every row (failed rows show their status) and the limits."""
    head = (
        f"{'system':15} {'model':13} {'B':>2} {'ctx':>5} {'prefill ms':>10} {'decode ms':>9} "
        f"{'b2b ms':>7} {'while ms':>8} {'tok/s':>9} {'roof ms':>8} {'roof %':>6}  status"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["context"], r["system"])):
        frac = r.get("roofline_fraction")
        lines.append(
            f"{r['system']:15} {r['model']:13} {r['batch']:2d} {r['context']:5d} "
            f"{_fmt(r.get('prefill_ms'), '10.2f')} {_fmt(r.get('decode_ms'), '9.3f')} "
            f"{_fmt(r.get('decode_b2b_ms'), '7.3f')} {_fmt(r.get('decode_while_ms'), '8.3f')} "
            f"{_fmt(r.get('tokens_per_s'), '9.1f')} {r['roofline_ms']:8.3f} "
            f"{_fmt(None if frac is None else 100 * frac, '6.1f')}  {r.get('status', '')}"
        )
    limits = {
        (r["gpu"], r["copy_gbps"], r.get("copy_method", "?"), r["matmul_tflops"]) for r in rows
    }
    for gpu, bw, method, rate in sorted(limits):
        lines.append(
            f"limits measured on {gpu}: copy {bw:.1f} GB/s (read+write; {method}), bf16 matmul "
            f"{rate:.3f} TFLOP/s"
        )
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: str | Path) -> bool:
    """Decode ms against the decode roofline, one marker per system (log-log, y = x line).

    Returns:
      False (and writes nothing) when matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in rows if r.get("decode_ms")]
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, system in enumerate(sorted({r["system"] for r in ok})):
        sel = [r for r in ok if r["system"] == system]
        ax.scatter(
            [r["roofline_ms"] for r in sel],
            [r["decode_ms"] for r in sel],
            label=system,
            marker="os^Dv"[i % 5],
        )
    if ok:
        lo = min(min(r["roofline_ms"], r["decode_ms"]) for r in ok) * 0.8
        hi = max(max(r["roofline_ms"], r["decode_ms"]) for r in ok) * 1.25
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="at the roofline (y = x)")
        ax.legend(fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("decode roofline, ms/step: (weights + valid KV bytes) / copy bandwidth")
    ax.set_ylabel("measured decode, ms/step (median)")
    ax.set_title("decode vs memory roofline on " + ", ".join(sorted({r["gpu"] for r in rows})))
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="merge benchmark JSON files, plot, print table")
    parser.add_argument("inputs", nargs="+", help="result JSON files (missing ones are named)")
    parser.add_argument("--output", help="merged JSON")
    parser.add_argument("--plot", help="PNG path")
    args = parser.parse_args(argv)
    present = [p for p in args.inputs if Path(p).is_file()]
    rows = read_json(present)
    if args.output:
        write_json(rows, args.output)
    if args.plot and not plot(rows, args.plot):
        print("plot skipped: matplotlib is not installed")
    for p in sorted(set(args.inputs) - set(present)):
        print(f"missing result file (that run wrote nothing): {p}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
