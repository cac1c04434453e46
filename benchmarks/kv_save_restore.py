"""Batched KV save/restore bandwidth vs a device-to-device copy and vs the pure-JAX reference.

    python benchmarks/kv_save_restore.py                       # GPU, Llama-3-8B-like cache
    python benchmarks/kv_save_restore.py --platform cpu --layers 4 --cap 256 --seq-len 100

GB/s = bytes of the saved payload (sum over arrays of Hkv * seq_len * D * itemsize) / time;
the copy baseline moves a buffer of the same byte count with XLA's own copy, so each figure
reads and writes the same number of bytes. Times are medians over `--iters` runs after warm-up.
Writes JSON to benchmarks/results/kv_save_restore_<platform>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from edgellm_fn import ffi


def _median_seconds(fn: Callable[[], object], iters: int) -> float:
    jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _chained(step: Callable, state: object, iters: int) -> float:
    """Median time of `state = step(state)` (donated, so buffers stay in place)."""
    box = [step(state)]
    jax.block_until_ready(box[0])

    def once():
        box[0] = step(box[0])
        return box[0]

    return _median_seconds(once, iters)


def run(args: argparse.Namespace) -> dict:
    device = jax.devices(args.platform)[0]
    dtype = jnp.dtype(args.dtype)
    put = functools.partial(jax.device_put, device=device)
    shape = (args.batch, args.heads, args.cap, args.head_dim)
    key = jax.random.PRNGKey(0)
    layers = [
        put(jax.random.uniform(jax.random.fold_in(key, i), shape, jnp.float32).astype(dtype))
        for i in range(2 * args.layers)  # k and v of every layer
    ]
    b, n = args.batch_idx, args.seq_len
    payload = len(layers) * args.heads * n * args.head_dim * dtype.itemsize

    save = jax.jit(lambda ls: ffi.save_kv_cache_batched(ls, b, n))
    save_ref = jax.jit(lambda ls: ffi.save_kv_cache_batched_ref(ls, b, n))
    saved = save(layers)
    donate = functools.partial(jax.jit, donate_argnums=0)
    restore = donate(lambda ls, s: ffi.instantiate_kv_cache_batched(ls, s, b))
    restore_ref = donate(lambda ls, s: ffi.instantiate_kv_cache_batched_ref(ls, s, b))

    flat = put(jnp.ones((payload // dtype.itemsize,), dtype))
    copy = jax.jit(lambda x: x.copy())
    if copy(flat).unsafe_buffer_pointer() == flat.unsafe_buffer_pointer():
        raise RuntimeError("the copy baseline was elided (output aliases input); nothing measured")

    t = {
        "d2d_copy": _median_seconds(lambda: copy(flat), args.iters),
        "save_batched": _median_seconds(lambda: save(layers), args.iters),
        "save_batched_ref": _median_seconds(lambda: save_ref(layers), args.iters),
        "restore_batched": _chained(lambda ls: restore(ls, saved), layers, args.iters),
    }
    layers = [put(jnp.zeros(shape, dtype)) for _ in range(2 * args.layers)]  # others donated
    t["restore_batched_ref"] = _chained(lambda ls: restore_ref(ls, saved), layers, args.iters)
    gbps = {k: payload / v / 1e9 for k, v in t.items()}
    return {
        "benchmark": "kv_save_restore",
        "command": "python benchmarks/kv_save_restore.py " + " ".join(args.argv),
        "device": device.device_kind,
        "platform": args.platform,
        "jax": jax.__version__,
        "config": {k: v for k, v in vars(args).items() if k != "argv"},
        "payload_bytes": payload,
        "median_seconds": t,
        "gb_per_s": gbps,
        "fraction_of_copy": {k: gbps[k] / gbps["d2d_copy"] for k in gbps if k != "d2d_copy"},
        "goal": "save/restore_batched >= 0.8 of d2d_copy",
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--platform", default="gpu", choices=["gpu", "cpu"])
    p.add_argument("--layers", type=int, default=32, help="attention layers (k and v each)")
    p.add_argument("--heads", type=int, default=8, help="Hkv")
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--cap", type=int, default=4096, help="KVcap")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-idx", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    result = run(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"kv_save_restore_{args.platform}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'op':<22} {'GB/s':>9} {'x copy':>7}")
    for k, v in result["gb_per_s"].items():
        frac = result["fraction_of_copy"].get(k, 1.0)
        print(f"{k:<22} {v:>9.1f} {frac:>7.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
