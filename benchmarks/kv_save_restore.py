"""Batched KV save/restore bandwidth vs the device-to-device memcpy ceiling and the pure-JAX ops.

    python benchmarks/kv_save_restore.py                       # GPU, Llama-3-8B-like cache
    python benchmarks/kv_save_restore.py --platform cpu --layers 4 --cap 256 --seq-len 100

GB/s = bytes read + written (twice the saved payload: sum over arrays of Hkv * seq_len * D *
itemsize) / time, the memcpy's convention. Each op is timed as a long chain: ``--iters`` calls
issued back to back (restores chained through their donated caches), one sync at the end, the
total divided by the calls, so host dispatch overlaps the device work. The ``*_in_program`` rows
time the device alone: one jitted program runs the op k times (rows from a device array), and
the slope between k = iters + 2 and k = 2 removes the per-call dispatch of the 2 x layers
buffers that bounds a chain of separate calls. The ceiling on the GPU
is ``cudaMemcpyAsync`` device to device (``bench.ceilings``), timed by CUDA events, of the
payload's size and of 4 GiB; on the CPU a jitted copy of the payload. Writes JSON to
benchmarks/results/kv_save_restore_<platform>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from edgellm_fn import ffi
from edgellm_fn.bench.ceilings import measure_copy_bandwidth, median_seconds


def _chain_seconds(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call of ``iters`` calls of ``fn`` issued back to back (one sync at the end)."""
    jax.block_until_ready(fn())  # compile + warm-up
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


def _in_program_seconds(program: Callable[[int], Callable[[], object]], n: int) -> float:
    """Device seconds per op: ``program(k)`` runs the op ``k`` times in ONE jitted program
    (distinct device row indices, so XLA can neither merge nor hoist the calls); the slope
    ``(t(n + 2) - t(2)) / n`` removes the dispatch of the program's buffers and the sync."""
    return (median_seconds(program(n + 2)) - median_seconds(program(2))) / n


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

    # The ceiling as seconds for the payload: a memcpy of the payload's size and of 4 GiB on the
    # GPU (bench.ceilings: cudaMemcpyAsync D2D, CUDA events), a jitted copy elsewhere.
    t = {}
    for name, nbytes in (("memcpy_payload", payload), ("memcpy_4gib", 4 << 30)):
        bandwidth, how = measure_copy_bandwidth(nbytes if args.platform == "gpu" else payload)
        t[name if how.startswith("cudaMemcpy") else "xla_copy"] = 2 * payload / bandwidth
    ceiling = "memcpy_4gib" if "memcpy_4gib" in t else "xla_copy"
    t["save_batched"] = _chain_seconds(lambda: save(layers), args.iters)
    t["save_batched_ref"] = _chain_seconds(lambda: save_ref(layers), args.iters)
    box = [layers]

    def restore_once(fn=restore):
        box[0] = fn(box[0], saved)
        return box[0]

    t["restore_batched"] = _chain_seconds(restore_once, args.iters)
    box[0] = [put(jnp.zeros(shape, dtype)) for _ in range(2 * args.layers)]  # others donated
    t["restore_batched_ref"] = _chain_seconds(lambda: restore_once(restore_ref), args.iters)
    # The same ops `k` times inside one program, rows from a device array: device time per op.
    rows = put(jnp.arange(64, dtype=jnp.int32) % args.batch)

    def saves(fn):
        def program(k):
            def many(ls, r):
                # Materialized on the device (the barrier), but only a scalar leaves: the
                # program's outputs do not grow with k (their creation is host time).
                outs = jax.lax.optimization_barrier([fn(ls, r[i], n) for i in range(k)])
                return sum(x[0, 0, 0].astype(jnp.float32) for o in outs for x in o)

            f = jax.jit(many)
            return lambda: f(box[0], rows)  # `layers` was donated to the restores

        return program

    def restores(fn):
        def program(k):
            def chain(ls, s, r):
                for i in range(k):
                    ls = fn(ls, s, r[i])
                return ls

            f = jax.jit(chain, donate_argnums=0)
            return lambda: restore_into(f)

        return program

    def restore_into(f):
        box[0] = f(box[0], saved, rows)
        return box[0]

    t["save_batched_in_program"] = _in_program_seconds(saves(ffi.save_kv_cache_batched), args.iters)
    t["save_batched_ref_in_program"] = _in_program_seconds(
        saves(ffi.save_kv_cache_batched_ref), args.iters
    )
    t["restore_batched_in_program"] = _in_program_seconds(
        restores(ffi.instantiate_kv_cache_batched), args.iters
    )
    t["restore_batched_ref_in_program"] = _in_program_seconds(
        restores(ffi.instantiate_kv_cache_batched_ref), args.iters
    )
    gbps = {k: 2 * payload / v / 1e9 for k, v in t.items()}
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
        "ceiling": ceiling,
        "fraction_of_ceiling": {k: gbps[k] / gbps[ceiling] for k in gbps},
        "goal": f"save/restore_batched(_in_program) >= 0.8 of {ceiling}",
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
    print(f"{'op':<32} {'GB/s':>9} {'x ceiling':>9}  (ceiling: {result['ceiling']})")
    for k, v in result["gb_per_s"].items():
        print(f"{k:<32} {v:>9.1f} {result['fraction_of_ceiling'][k]:>9.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
