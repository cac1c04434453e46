"""Soak: a long stream of varied and hostile requests against one engine (not a test).

    python benchmarks/soak.py --duration 180                  # CPU, the embedded demo model
    python benchmarks/soak.py --requests 2000 --output benchmarks/results/soak_cpu.json
    python benchmarks/soak.py --preset llama-3.2-1b --duration 300 --kv-capacity 512   # GPU

Valid requests vary everything a caller can: the number of prompts (so the batch count), the
batch size, prompt lengths (so the prefill bucket), max_new_tokens (so the step bucket; some rows
stop at the KV capacity), greedy/temperature/top-p/top-k sampling, stop strings, logit bias,
log-probabilities, the seed and the loop. Every few requests a hostile one is interleaved (out of
vocabulary or negative ids, empty and too long prompts, per-prompt lists of the wrong length,
empty stop strings, out-of-range batch size, seed, sampling values and bias, a donated state,
malformed request JSON); each must be refused with the project's own error type (``InputError``
/ ``ConfigError``), and the next request must still work.

Reported: requests completed, tokens generated, rejections by error type and kind, unexpected
outcomes (an exception from a valid request, or an unexpected exception type or a hostile
input accepted: must be 0), XLA compilations during warm-up and after it (listener on
``/jax/core/compile/backend_compile_duration``; must be 0 after), and over time the host RSS,
the number of live device buffers and the device memory in use (where the device reports it).
The warm-up first runs every shape the stream can produce (batch 1..max, every prompt bucket,
every step bucket, both loops), so any compilation after it is a recompile.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import numpy as np

import edgellm_fn as ef
from edgellm_fn.demo import PROMPTS, demo_model_dir
from edgellm_fn.errors import ConfigError, InputError
from edgellm_fn.runtime import steps
from edgellm_fn.runtime.generate import generate
from edgellm_fn.runtime.loops import step_bucket
from edgellm_fn.runtime.prompts import bucket_length
from edgellm_fn.runtime.sampling import REQUEST_LIMITS
from edgellm_fn.text.requests import parse_requests, responses_text
from edgellm_fn.text.stops import find_stop

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compiles = [0]


def _on_event(event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == COMPILE_EVENT:
        _compiles[0] += 1


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def device_bytes_in_use() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_in_use")


STOPS = ["\n\n", ")", "return", ":", "self.", "    "]


class Soak:
    def __init__(self, engine, tokenizer, rng: np.random.Generator, max_new: int):
        self.engine, self.tok, self.rng, self.max_new = engine, tokenizer, rng, max_new
        cfg = engine.config
        self.vocab = cfg.model.vocab_size
        self.corpus = tokenizer.encode("\n".join(PROMPTS * 4), add_special_tokens=False)
        self.completed = 0  # generate calls that returned
        self.prompts_done = 0
        self.tokens = 0
        self.rejections: collections.Counter[str] = collections.Counter()
        self.kinds: collections.Counter[str] = collections.Counter()
        self.unexpected: list[str] = []

    # ---- valid requests -------------------------------------------------------------------
    def prompt(self, length: int | None = None) -> list[int]:
        cfg = self.engine.config
        n = length or int(self.rng.integers(1, cfg.max_input_len + 1))
        start = int(self.rng.integers(0, len(self.corpus) - n))
        return self.corpus[start : start + n]

    def random_kwargs(self, n: int) -> dict:
        r = self.rng
        kw: dict = dict(
            max_new_tokens=int(r.integers(1, self.max_new + 1)),
            seed=int(r.integers(0, 2**63 - 1)),
            loop=str(r.choice(["python", "while"])),
        )
        mode = r.integers(0, 5)
        if mode == 1:
            kw["temperature"] = float(r.uniform(0.1, 1.5))
        elif mode == 2:
            kw["top_p"] = float(r.uniform(0.5, 1.0))
        elif mode == 3:
            kw["top_k"] = int(r.integers(0, 50))
        elif mode == 4:
            kw.update(temperature=0.0)
        if r.random() < 0.5:
            kw["batch_size"] = int(r.integers(1, self.engine.config.max_batch_size + 1))
        if r.random() < 0.4:
            kw["stop"] = [
                list(r.choice(STOPS, size=int(r.integers(0, 3)), replace=False)) for _ in range(n)
            ]
        if r.random() < 0.4:
            kw["num_logprobs"] = [int(r.integers(0, 6)) for _ in range(n)]
        if r.random() < 0.4:
            kw["logit_bias"] = [
                {int(r.integers(0, self.vocab)): float(r.uniform(-100, 100)) for _ in range(3)}
                if r.random() < 0.5
                else None
                for _ in range(n)
            ]
        return kw

    def valid(self) -> None:
        n = int(self.rng.integers(1, 2 * self.engine.config.max_batch_size + 1))
        prompts = [self.prompt() for _ in range(n)]
        kw = self.random_kwargs(n)
        out = generate(self.engine, self.tok, prompts, **kw)
        responses_text(out)  # strict JSON: raises on NaN
        stops = kw.get("stop") or [[]] * n
        for c, s in zip(out, stops, strict=True):
            assert 1 <= len(c.tokens) <= c.token_limit <= kw["max_new_tokens"], c
            assert c.finish_reason in ("stop", "length"), c
            assert find_stop(c.text, s) is None, (c.text, s)
        self.completed += 1
        self.prompts_done += n
        self.tokens += sum(len(c.tokens) for c in out)

    # ---- hostile requests -----------------------------------------------------------------
    def hostile(self) -> None:
        cfg = self.engine.config
        good = [self.prompt(8), self.prompt(5)]
        cases = {
            "id >= vocab": lambda: generate(self.engine, self.tok, [[*good[0], self.vocab]]),
            "negative id": lambda: generate(self.engine, self.tok, [[-1, *good[1]]]),
            "empty prompt": lambda: generate(self.engine, self.tok, [good[0], []]),
            "prompt too long": lambda: generate(
                self.engine, self.tok, [self.corpus[: cfg.max_input_len + 1]]
            ),
            "short per-prompt list": lambda: generate(
                self.engine, self.tok, good, num_logprobs=[1]
            ),
            "long per-prompt list": lambda: generate(
                self.engine, self.tok, good, stop=[[], [], ["x"]]
            ),
            "empty stop": lambda: generate(self.engine, self.tok, good, stop=[[""], []]),
            "batch_size 0": lambda: generate(self.engine, self.tok, good, batch_size=0),
            "seed 2**64": lambda: generate(self.engine, self.tok, good, seed=2**64),
            "bias id": lambda: generate(self.engine, self.tok, good, logit_bias=[{10**6: 1}, None]),
            "bias nan": lambda: generate(
                self.engine, self.tok, good, logit_bias=[{3: float("nan")}, None]
            ),
            "temperature -1": lambda: generate(self.engine, self.tok, good, temperature=-1.0),
            "top_p 0": lambda: generate(self.engine, self.tok, good, top_p=0.0),
            "num_logprobs 51": lambda: generate(self.engine, self.tok, good, num_logprobs=51),
            "max_new_tokens 0": lambda: generate(self.engine, self.tok, good, max_new_tokens=0),
            "donated state": self._donated,
            "embed id": lambda: steps.embed(self.engine, np.array([[self.vocab + 7]])),
            "request NaN": lambda: parse_requests(
                {"temperature": float("nan"), "requests": [{"messages": []}]}
            ),
            "request surrogate": lambda: parse_requests(
                {"requests": [{"messages": [{"role": "user", "content": "\ud800"}]}]}
            ),
            "request unknown field": lambda: parse_requests({"requests": [], "x": 1}),
            "request deep": lambda: parse_requests(json.loads("[" * 50 + "]" * 50)),
        }
        kind = str(self.rng.choice(list(cases)))
        try:
            cases[kind]()
        except (InputError, ConfigError) as e:
            self.rejections[type(e).__name__] += 1
            self.kinds[kind] += 1
            return
        except Exception as e:  # noqa: BLE001 - the soak counts every other outcome
            self.unexpected.append(f"hostile {kind}: {type(e).__name__}: {e}")
            return
        self.unexpected.append(f"hostile {kind}: accepted")

    def _donated(self) -> None:
        state = ef.create_state(self.engine.config, 1, REQUEST_LIMITS)  # generate's shapes
        ids = np.array([self.prompt(8)], np.int32)
        ef.prefill(self.engine, state, ef.embed(self.engine, ids), np.array([8]))
        ef.prefill(self.engine, state, ef.embed(self.engine, ids), np.array([8]))  # donated

    def run_one(self, hostile: bool) -> None:
        try:
            self.hostile() if hostile else self.valid()
        except Exception:  # noqa: BLE001
            self.unexpected.append(traceback.format_exc(limit=4))


def warm_up(soak: Soak, max_new: int) -> None:
    """Every shape the stream can produce: batch sizes x prompt buckets x step buckets x loops."""
    cfg = soak.engine.config
    buckets = sorted({bucket_length(n, cfg.max_input_len) for n in range(1, cfg.max_input_len + 1)})
    step_buckets = sorted({step_bucket(n) for n in range(1, max_new + 1)})
    for b in range(1, cfg.max_batch_size + 1):
        for s in buckets:  # prefill shapes; the python loop's step has one shape per batch
            generate(soak.engine, soak.tok, [soak.prompt(s)] * b, max_new_tokens=8)
        for t in step_buckets:  # the while loop has one executable per step bucket
            generate(soak.engine, soak.tok, [soak.prompt(3)] * b, max_new_tokens=t, loop="while")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint directory (default: the embedded demo model)")
    p.add_argument(
        "--preset",
        help="instead of --model: a bench preset with random weights (e.g. llama-3.2-1b on the "
        "GPU), written to a temporary directory",
    )
    p.add_argument("--duration", type=float, default=180.0, help="seconds of steady state")
    p.add_argument("--requests", type=int, help="stop after this many requests instead")
    p.add_argument("--hostile-every", type=int, default=4, help="one hostile request in N")
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--max-input-len", type=int, default=64)
    p.add_argument("--kv-capacity", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=64, help="largest max_new_tokens drawn")
    p.add_argument("--sample-every", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="JSON report path")
    p.add_argument("--log-compiles", action="store_true", help="log compilations after warm-up")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])

    with tempfile.TemporaryDirectory(prefix="soak_") as tmp:
        if args.preset:
            from edgellm_fn.testing.checkpoints import write_preset_checkpoint

            args.model = str(write_preset_checkpoint(args.preset, Path(tmp) / args.preset))
        return run(args)


def run(args) -> int:
    """The soak itself (see the module docstring)."""
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    path = Path(args.model) if args.model else demo_model_dir()
    engine = ef.load_engine(
        path,
        max_batch_size=args.max_batch,
        max_input_len=args.max_input_len,
        kv_capacity=args.kv_capacity,
    )
    tok = ef.Tokenizer.from_dir(path, vocab_size=engine.config.model.vocab_size)
    soak = Soak(engine, tok, np.random.default_rng(args.seed), args.max_new_tokens)

    t0 = time.perf_counter()
    warm_up(soak, args.max_new_tokens)
    warm_s = time.perf_counter() - t0
    warm_compiles = _compiles[0]
    print(f"warm-up: {warm_compiles} compilations in {warm_s:.1f} s", file=sys.stderr)
    if args.log_compiles:
        jax.config.update("jax_log_compiles", True)

    samples = []

    def sample(elapsed: float) -> None:
        gc.collect()
        samples.append(
            {
                "t_s": round(elapsed, 1),
                "requests": soak.completed,
                "rejected": sum(soak.rejections.values()),
                "rss_mib": round(rss_bytes() / 2**20, 1),
                "live_buffers": len(jax.live_arrays()),
                "device_bytes_in_use": device_bytes_in_use(),
                "compiles_after_warmup": _compiles[0] - warm_compiles,
            }
        )
        print(f"  {samples[-1]}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    sample(0.0)
    next_sample, i = args.sample_every, 0
    while True:
        elapsed = time.perf_counter() - start
        if args.requests is not None and i >= args.requests:
            break
        if args.requests is None and elapsed >= args.duration:
            break
        soak.run_one(hostile=i % args.hostile_every == args.hostile_every - 1)
        i += 1
        if elapsed >= next_sample:
            sample(elapsed)
            next_sample += args.sample_every
    elapsed = time.perf_counter() - start
    sample(elapsed)

    first, last = samples[0], samples[-1]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"device {jax.devices()[0].device_kind}",
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/soak.py " + " ".join(args.argv),
        "model": path.name,
        "limits": dict(
            max_batch=args.max_batch, max_input_len=args.max_input_len, kv_capacity=args.kv_capacity
        ),
        "warmup": {"seconds": round(warm_s, 1), "compilations": warm_compiles},
        "seconds": round(elapsed, 1),
        "requests_total": i,
        "requests_completed": soak.completed,
        "prompts_completed": soak.prompts_done,
        "tokens_generated": soak.tokens,
        "rejections_by_type": dict(soak.rejections),
        "rejections_by_kind": dict(sorted(soak.kinds.items())),
        "unexpected": len(soak.unexpected),
        "unexpected_first": soak.unexpected[:5],
        "compilations_after_warmup": last["compiles_after_warmup"],
        "rss_mib": {
            "start": first["rss_mib"],
            "end": last["rss_mib"],
            "max": max(s["rss_mib"] for s in samples),
        },
        "live_buffers": {
            "start": first["live_buffers"],
            "end": last["live_buffers"],
            "max": max(s["live_buffers"] for s in samples),
        },
        "samples": samples,
    }
    text = json.dumps(report, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
    print(text)
    return 1 if soak.unexpected or last["compiles_after_warmup"] else 0


if __name__ == "__main__":
    sys.exit(main())
