"""Load benchmark of the OpenAI-compatible server (a benchmark, not a test).

Starts ``edgellm-fn serve`` (and, as the peer, ``transformers serve`` on the same checkpoint)
as real server processes on loopback, then runs N concurrent streaming clients (the official
``openai`` client), each sending R completion requests one after another. Reports per system:
requests/s, output tokens/s, time to first token and inter-token latency (p50/p99).

    python benchmarks/serve_load.py                      # the demo model, 4 clients, both
    python benchmarks/serve_load.py --model DIR --clients 8 --requests 4 --max-tokens 64 \
        --peers transformers --output benchmarks/results/serve-load.json
    python benchmarks/serve_load.py --preset llama-3.2-1b --clients 8   # GPU: random weights

Every request is greedy (temperature 0) with the same prompts for both systems. The peer's
tokens/s counts the completion tokens it reports in ``usage`` (or its chunks when it reports
none).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import openai

PROMPTS = [
    "def read_file(path):\n    with open(path",
    "class Stack:\n    def __init__(self):",
    "import numpy as np\n\ndef mean(xs):",
    "for i in range(10):\n    print(",
    "def fib(n):\n    if n < 2:",
    "# sort a list of words by length\nwords =",
    "try:\n    x = int(s)\nexcept",
    "def main():\n    args =",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(cmd: list[str], port: int, timeout: float, log: str):
    """Runs ``cmd`` until ``/health`` answers; stops it afterwards."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError(f"{' '.join(cmd)}: no /health after {timeout} s; see {log}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def one_client(client, model: str, prompts: list[str], max_tokens: int, out: list) -> None:
    for prompt in prompts:
        start = time.perf_counter()
        times, tokens = [], None
        stream = await client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                times.append(time.perf_counter())
            if getattr(chunk, "usage", None) is not None:
                tokens = chunk.usage.completion_tokens
        end = time.perf_counter()
        out.append(dict(start=start, end=end, times=times, tokens=tokens or len(times)))


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    # warm-up: one request per client slot shape (compiles, caches)
    await one_client(client, model, PROMPTS[:1], max_tokens, [])
    results: list[dict] = []
    jobs = [
        [PROMPTS[(c * requests + r) % len(PROMPTS)] for r in range(requests)]
        for c in range(clients)
    ]
    t0 = time.perf_counter()
    await asyncio.gather(*(one_client(client, model, j, max_tokens, results) for j in jobs))
    wall = time.perf_counter() - t0
    await client.close()
    ttft = [1e3 * (r["times"][0] - r["start"]) for r in results if r["times"]]
    itl = [1e3 * d for r in results for d in np.diff(r["times"])]
    tokens = sum(r["tokens"] for r in results)

    def pct(xs, q):
        return round(float(np.percentile(xs, q)), 2) if xs else None

    return dict(
        clients=clients,
        requests=len(results),
        max_tokens=max_tokens,
        wall_s=round(wall, 3),
        requests_per_s=round(len(results) / wall, 3),
        output_tokens=tokens,
        output_tokens_per_s=round(tokens / wall, 1),
        ttft_ms_p50=pct(ttft, 50),
        ttft_ms_p99=pct(ttft, 99),
        itl_ms_p50=pct(itl, 50),
        itl_ms_p99=pct(itl, 99),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint directory (default: the demo)")
    ap.add_argument(
        "--preset",
        default=None,
        help="instead of --model: a bench preset with random weights and a character "
        "tokenizer, written to a temporary directory (e.g. llama-3.2-1b on the GPU)",
    )
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=None, help="ours (default: --clients)")
    ap.add_argument("--peers", default="transformers", help="'transformers' or ''")
    ap.add_argument("--startup-timeout", type=float, default=300)
    ap.add_argument("--output", default=None, help="write the rows as JSON")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_load_") as tmp:
        if args.preset is not None:
            from edgellm_fn.testing.checkpoints import write_preset_checkpoint

            args.model = str(write_preset_checkpoint(args.preset, Path(tmp) / args.preset))
        elif args.model is None:
            from edgellm_fn.demo import demo_model_dir

            args.model = str(demo_model_dir())
        return run(args)


def run(args) -> int:
    """Both systems under the same load; prints the table last."""
    rows = []
    systems = [
        (
            "edgellm_fn",
            lambda port: [
                sys.executable,
                "-m",
                "edgellm_fn.cli",
                "serve",
                "--model",
                args.model,
                "--port",
                str(port),
                "--max-batch",
                str(args.max_batch or args.clients),
                "--max-queue",
                str(max(64, args.clients * args.requests)),
            ],
            os.path.basename(args.model.rstrip("/")),
        )
    ]
    if "transformers" in args.peers.split(","):
        exe = os.path.join(os.path.dirname(sys.executable), "transformers")
        systems.append(
            (
                "transformers serve --continuous-batching",
                lambda port: [
                    exe,
                    "serve",
                    args.model,
                    "--port",
                    str(port),
                    "--continuous-batching",
                ],
                args.model,
            )
        )
    for name, cmd, model in systems:
        port = free_port()
        log = f"/tmp/serve_load_{name.split()[0]}.log"
        try:
            with server(cmd(port), port, args.startup_timeout, log) as url:
                row = asyncio.run(load(url, model, args.clients, args.requests, args.max_tokens))
        except Exception as e:  # noqa: BLE001 - a failing peer costs only its own row
            row = dict(error=f"{type(e).__name__}: {e}"[:300])
        rows.append(dict(system=name, **row))
        print(json.dumps(rows[-1]), flush=True)
    machine = dict(platform=platform.platform(), cpus=os.cpu_count(), python=sys.version.split()[0])
    if args.output:
        with open(args.output, "w") as fh:
            json.dump(dict(machine=machine, model=args.model, rows=rows), fh, indent=1)
    print(f"\nmachine: {machine}  model: {args.model}")
    cols = [
        "requests_per_s",
        "output_tokens_per_s",
        "ttft_ms_p50",
        "ttft_ms_p99",
        "itl_ms_p50",
        "itl_ms_p99",
    ]
    print("| system | clients | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for r in rows:
        vals = [str(r.get(c, r.get("error", "-"))) for c in cols]
        print(f"| {r['system']} | {r.get('clients', '-')} | " + " | ".join(vals) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
