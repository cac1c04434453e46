"""Decode kernels on the GPU, against the memcpy ceiling and XLA, in one run (prints a table last).

    python benchmarks/decode_kernels.py [--sections ceiling,gemv,attention,decode,prefill]
        [--out DIR]

Sections (each independent; a failing one prints its error and the rest still run):
- ceiling: a 4 GiB device-to-device cudaMemcpyAsync (``bench.ceilings``, CUDA events), bytes
  read + written / median time.
- gemv: every Llama-3.2-1B projection, 16 distinct copies (as 16 layers, past L2) in one jit,
  fused kernel vs the XLA reference, M = 1 and 8: GB/s of weights streamed.
- attention: 16 layers of decode attention at valid length 2048, capacity 4096 and 32768.
- decode: the whole model (random bf16 weights), `decode_while` ms/token, kernels on vs off.
- prefill: 2048-token prefill, kernels (cuDNN flash attention) vs the reference path.
- flash: cuDNN flash attention alone (16 layers' calls in one jit), causal, B = 1 and 8, S = 2048,
  with and without per-row sequence lengths: TFLOP/s of the causal half.
- loop: the cost of one `decode_while` call at 32 and 256 tokens (state reused), with the last
  call's result held or dropped: host dispatch and total time, to separate the per-call cost
  from the per-token cost (run it under several XLA_FLAGS to compare command-buffer settings).
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL "
    "--xla_gpu_graph_min_graph_size=1",
)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROWS: list[dict] = []


def timed(fn, *args, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``fn(*args)`` (blocked), after warm-up (compilation excluded)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def row(section: str, name: str, **values) -> None:
    ROWS.append(dict(section=section, name=name, **values))
    print(section, name, values, flush=True)


def ceiling() -> float:
    from edgellm_fn.bench.ceilings import measure_copy_bandwidth

    bandwidth, how = measure_copy_bandwidth(4 << 30)
    gbs = bandwidth / 1e9
    row("ceiling", "memcpy D2D 4 GiB", gb_s=round(gbs, 1), how=how)
    return gbs


def gemv_section(copy_gbs: float) -> None:
    from edgellm_fn import ffi

    h, f, v = 2048, 8192, 128256
    shapes = {
        "qkv (norm)": (3072, h, dict(norm=True)),
        "o (+res)": (h, 2048, dict(res=True)),
        "gate_up (norm, gated)": (2 * f, h, dict(norm=True, gated=True)),
        "down (+res)": (h, f, dict(res=True)),
        "lm_head (norm, f32)": (v, h, dict(norm=True, logits=True)),
    }
    key = jax.random.PRNGKey(0)
    for name, (n, k, opt) in shapes.items():
        copies = 2 if opt.get("logits") else 16
        ws = [
            jax.random.normal(jax.random.fold_in(key, i), (n, k), jnp.bfloat16) * 0.02
            for i in range(copies)
        ]
        nw = jnp.ones((k,), jnp.bfloat16)
        for m in (1, 8):
            x = jax.random.normal(key, (m, k), jnp.bfloat16)
            n_out = n // 2 if opt.get("gated") else n
            res = jnp.ones((m, n_out), jnp.bfloat16)
            kw = dict(
                norm_weight=nw if opt.get("norm") else None,
                gated=bool(opt.get("gated")),
                out_dtype=jnp.float32 if opt.get("logits") else None,
            )
            results = {}
            for impl, op in (("kernel", ffi.gemv), ("xla", ffi.gemv_ref)):

                def run(x, ws, op=op, res=res, opt=opt, kw=kw):
                    acc = []
                    for w in ws:
                        r = res if opt.get("res") else None
                        acc.append(jnp.sum(op(x, w, residual=r, **kw).astype(jnp.float32)))
                    return jnp.stack(acc)

                fn = jax.jit(run)
                sec = timed(fn, x, ws) / copies
                results[impl] = sec
                gbs = n * k * 2 / sec / 1e9
                row(
                    "gemv",
                    f"{name} M={m} {impl}",
                    us=round(sec * 1e6, 2),
                    gb_s=round(gbs, 1),
                    frac_copy=round(gbs / copy_gbs, 3),
                )
            got = jax.jit(lambda x, w, kw=kw: ffi.gemv(x, w, **kw))(x, ws[0])
            want = ffi.gemv_ref(
                x.astype(jnp.float32),
                ws[0].astype(jnp.float32),
                residual=None,
                **{
                    **kw,
                    "norm_weight": None if kw["norm_weight"] is None else nw.astype(jnp.float32),
                    "out_dtype": None,
                },
            )
            err = float(jnp.linalg.norm(got.astype(jnp.float32) - want) / jnp.linalg.norm(want))
            row("gemv", f"{name} M={m} check", rel_err_vs_f32=err)


def attention_section() -> None:
    from edgellm_fn import ffi

    hkv, g, d, valid = 8, 4, 64, 2048
    for cap in (4096, 32768):
        key = jax.random.PRNGKey(1)
        ks = [
            jax.random.normal(jax.random.fold_in(key, i), (1, hkv, cap, d), jnp.bfloat16)
            for i in range(16)
        ]
        vs = [
            jax.random.normal(jax.random.fold_in(key, 100 + i), (1, hkv, cap, d), jnp.bfloat16)
            for i in range(16)
        ]
        qkv = jax.random.normal(key, (1, (hkv * g + 2 * hkv) * d), jnp.bfloat16)
        rope = jnp.ones((1, cap, d), jnp.float32)
        start = jnp.full((1,), valid - 1, jnp.int32)
        for impl, op in (("kernel", ffi.decode_attention), ("xla", ffi.decode_attention_ref)):

            def run(qkv, ks, vs, op=op, rope=rope, start=start):
                outs, nk, nv = [], [], []
                for k, v in zip(ks, vs, strict=True):
                    o, k, v = op(qkv, k, v, rope, start, start + 1)
                    outs.append(jnp.sum(o.astype(jnp.float32)))
                    nk.append(k)
                    nv.append(v)
                return jnp.stack(outs), nk, nv

            step = jax.jit(run, donate_argnums=(1, 2))  # caches updated in place, as in decode
            for _ in range(3):
                _, ks, vs = step(qkv, ks, vs)
            jax.block_until_ready(ks)
            times = []
            for _ in range(20):
                t = time.perf_counter()
                out, ks, vs = step(qkv, ks, vs)
                jax.block_until_ready(out)
                times.append(time.perf_counter() - t)
            sec = statistics.median(times)
            kv_bytes = 16 * 2 * hkv * valid * d * 2
            row(
                "attention",
                f"16 layers valid={valid} cap={cap} {impl}",
                us=round(sec * 1e6, 1),
                gb_s_valid_kv=round(kv_bytes / sec / 1e9, 1),
            )
        del ks, vs


PRESET = "llama-3.2-1b"


def _engine(kernels: str, capacity: int, batch: int, max_input: int):
    from edgellm_fn.bench.presets import get_preset, random_params
    from edgellm_fn.config import EngineConfig
    from edgellm_fn.engine.xla import XlaEngine

    preset = get_preset(PRESET)
    cfg = EngineConfig.create(
        preset.model,
        max_batch_size=batch,
        max_input_len=max_input,
        kv_capacity=capacity,
        dtype="bfloat16",
    )
    params = random_params(preset.model, jax.random.PRNGKey(0), "bfloat16")
    return XlaEngine(cfg, params, kernels)


def decode_section(copy_gbs: float, cases) -> None:
    from edgellm_fn import create_state, embed, prefill
    from edgellm_fn.bench.ceilings import weight_bytes_per_decode_step
    from edgellm_fn.runtime import loops
    from edgellm_fn.runtime.sampling import SamplingConfig, make_sampling_params

    tokens = 128
    for batch, ctx, cap, kernel_modes in cases:
        for kernels in kernel_modes:
            engine = _engine(kernels, cap, batch, ctx)
            ids = np.random.RandomState(0).randint(0, 1000, (batch, ctx)).astype(np.int32)
            lengths = np.full((batch,), ctx)
            greedy = SamplingConfig(max_top_k=1)  # greedy: no vocabulary sort in the loop
            config, params = make_sampling_params(
                batch, vocab_size=engine.config.model.vocab_size, top_k=1, config=greedy
            )
            limits = loops.token_limits(engine, lengths, tokens)

            def once(
                engine=engine,
                ids=ids,
                lengths=lengths,
                config=config,
                params=params,
                limits=limits,
                batch=batch,
            ):
                state = create_state(engine.config, batch, config)
                state = prefill(engine, state, embed(engine, ids), lengths)
                jax.block_until_ready(state)
                t = time.perf_counter()
                state, res = loops.decode_while(
                    engine,
                    state,
                    config,
                    params,
                    jax.random.PRNGKey(0),
                    limits,
                    eos_ids=(),
                    max_new_tokens=tokens,
                )
                jax.block_until_ready(res.tokens)
                return time.perf_counter() - t, np.asarray(res.tokens)

            once()  # compile
            sec, toks = min((once() for _ in range(3)), key=lambda r: r[0])
            ms = sec / tokens * 1e3
            roof = (
                weight_bytes_per_decode_step(engine.config.model, batch, "bfloat16")
                / copy_gbs
                / 1e6
            )
            row(
                "decode",
                f"B={batch} ctx={ctx} cap={cap} kernels={kernels}",
                ms_per_token=round(ms, 4),
                roofline_ms=round(roof, 4),
                frac=round(roof / ms, 3),
                first_tokens=toks[0, :6].tolist(),
                path=engine.decode_path(batch)[0],
            )
            del engine


def prefill_section(cases) -> None:
    from edgellm_fn import create_state, embed, prefill

    for batch, s, kernel_modes in cases:
        for kernels in kernel_modes:
            engine = _engine(kernels, 4096, batch, s)
            ids = np.random.RandomState(0).randint(0, 1000, (batch, s)).astype(np.int32)
            lengths = np.full((batch,), s)
            x = embed(engine, ids)

            def fresh(engine=engine, x=x, lengths=lengths, batch=batch):
                state = create_state(engine.config, batch)
                return prefill(engine, state, x, lengths).io.logits

            box = [create_state(engine.config, batch)]

            def reused(engine=engine, x=x, lengths=lengths, box=box):
                # as a server does: the last request's state is donated, its buffers reused
                box[0] = prefill(engine, box[0], x, lengths)
                return box[0].io.logits

            for name, fn in (("fresh", fresh), ("reused", reused)):
                sec = timed(fn, repeats=5, warmup=2)
                row("prefill", f"B={batch} S={s} kernels={kernels} state={name}",
                    ms=round(sec * 1e3, 2))  # fmt: skip
            del engine, box


def flash_section() -> None:
    hq, hkv, d, s = 32, 8, 64, 2048
    for batch in (1, 8):
        key = jax.random.PRNGKey(2)
        q = jax.random.normal(key, (batch, s, hq, d), jnp.bfloat16)
        k = jax.random.normal(jax.random.fold_in(key, 1), (batch, s, hkv, d), jnp.bfloat16)
        v = jax.random.normal(jax.random.fold_in(key, 2), (batch, s, hkv, d), jnp.bfloat16)
        lengths = jnp.full((batch,), s, jnp.int32)
        for with_lengths in (False, True):

            def run(q, k, v, lengths, with_lengths=with_lengths):
                out = q
                for _ in range(16):  # as 16 layers: each call depends on the last
                    out = jax.nn.dot_product_attention(
                        out, k, v, is_causal=True, implementation="cudnn",
                        query_seq_lengths=lengths if with_lengths else None,
                        key_value_seq_lengths=lengths if with_lengths else None,
                    )  # fmt: skip
                return out

            sec = timed(jax.jit(run), q, k, v, lengths, repeats=10) / 16
            flops = 4 * batch * hq * s * s * d / 2  # QK^T and PV, causal half
            row(
                "flash",
                f"B={batch} S={s} causal lengths={with_lengths}",
                ms_per_layer=round(sec * 1e3, 4),
                tflop_s=round(flops / sec / 1e12, 1),
            )


def loop_section() -> None:
    """Per-call vs per-token cost of `decode_while` (B=1, context 2048, capacity 4096).

    The state is reused (prefill donates the last one). ``prev=held``: the last call's result is
    still alive during the call (its output buffers cannot be recycled, so the new ones get other
    addresses); ``prev=dropped``: it is deleted first. A gap between the two is the cost of
    re-recording the loop's command buffer for new buffer addresses.
    """
    from edgellm_fn import create_state, embed, prefill
    from edgellm_fn.runtime import loops
    from edgellm_fn.runtime.sampling import SamplingConfig, make_sampling_params

    batch, ctx = 1, 2048
    engine = _engine("auto", 4096, batch, ctx)
    ids = np.random.RandomState(0).randint(0, 1000, (batch, ctx)).astype(np.int32)
    lengths = np.full((batch,), ctx)
    x = embed(engine, ids)
    config, params = make_sampling_params(
        batch, vocab_size=engine.config.model.vocab_size, top_k=1,
        config=SamplingConfig(max_top_k=1),
    )  # fmt: skip
    state = prefill(engine, create_state(engine.config, batch, config), x, lengths)
    flags = os.environ.get("XLA_FLAGS", "")
    cb = flags.split("command_buffer=")[1].split()[0] if "command_buffer=" in flags else "default"
    for tokens in (32, 256):
        limits = loops.token_limits(engine, lengths, tokens)
        for prev in ("held", "dropped"):
            res, totals, dispatches = None, [], []
            for i in range(6):
                state = prefill(engine, state, x, lengths)
                if prev == "dropped":
                    res = None
                jax.block_until_ready(state)
                t = time.perf_counter()
                state, res = loops.decode_while(
                    engine, state, config, params, jax.random.PRNGKey(0), limits, eos_ids=(),
                    max_new_tokens=tokens,
                )  # fmt: skip
                dispatch = time.perf_counter() - t
                jax.block_until_ready(res.tokens)
                if i >= 2:  # the first calls compile and settle the allocator
                    totals.append(time.perf_counter() - t)
                    dispatches.append(dispatch)
            total = statistics.median(totals)
            row(
                "loop",
                f"cb={cb} tokens={tokens} prev={prev}",
                dispatch_ms=round(statistics.median(dispatches) * 1e3, 2),
                total_ms=round(total * 1e3, 2),
                ms_per_token=round(total / tokens * 1e3, 4),
            )
    del state, res, engine


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--sections", default="ceiling,gemv,attention,decode,prefill")
    p.add_argument("--decode", default="1:2048:4096,1:128:4096,8:2048:4096,1:128:32768")
    p.add_argument("--modes", default="auto,off")
    p.add_argument("--preset", default=PRESET, help="model shape of the decode/prefill sections")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    sections = args.sections.split(",")
    globals()["PRESET"] = args.preset
    print("devices", jax.devices(), "XLA_FLAGS", os.environ.get("XLA_FLAGS"), flush=True)
    copy_gbs = 4289.0
    modes = tuple(args.modes.split(","))
    decode_cases = [tuple(int(v) for v in c.split(":")) + (modes,) for c in args.decode.split(",")]
    jobs = {
        "gemv": lambda: gemv_section(copy_gbs),
        "attention": attention_section,
        "decode": lambda: decode_section(copy_gbs, decode_cases),
        "prefill": lambda: prefill_section([(1, 2048, modes), (8, 2048, ("auto",))]),
        "flash": flash_section,
        "loop": loop_section,
    }
    if "ceiling" in sections:
        try:
            copy_gbs = ceiling()
        except Exception:  # noqa: BLE001 - report and go on with the measured fallback
            traceback.print_exc()
    for name, job in jobs.items():
        if name in sections:
            try:
                job()
            except Exception:  # noqa: BLE001 - one failing section must not hide the others
                traceback.print_exc()
                row(name, "FAILED", error=traceback.format_exc(limit=2)[-400:])
    with open(os.path.join(args.out, "decode_kernels.json"), "w") as fh:
        json.dump(ROWS, fh, indent=1)
    print(f"\n== summary (copy ceiling {copy_gbs:.0f} GB/s)")
    for r in ROWS:
        vals = {k: v for k, v in r.items() if k not in ("section", "name", "first_tokens", "error")}
        print(f"{r['section']:9s} {r['name']:48s} {vals}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
