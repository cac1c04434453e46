"""EAGLE3 speculative decoding vs vanilla greedy decoding: tokens/s, mean acceptance, speed-up.

    python benchmarks/spec_decode.py                         # CPU, the embedded demo model
    python benchmarks/spec_decode.py --batch 4 --new 96 --trees 1x6x7 4x4x16

Drafts: ``trained`` (``--draft DIR``; with the demo model by default its shipped head,
``edgellm_fn/assets/demo_eagle3``), ``random`` (an untrained EAGLE3 head in the community
layout: acceptance ~1, so it measures the overhead of a round) and ``oracle`` (the base itself
behind the draft contract: the base's own greedy tokens are always in the tree, so it measures
the best acceptance a tree shape allows; its proposal steps cost a full base forward, so it is
no speed target). All run the reference path (``engine/xla_spec.py``); vanilla runs the same
reference layers (``kernels="off"``). Tokens must be equal; the script exits 1 when they are
not.
Times: the median of ``--iters`` whole generations (one jitted while loop each) after a warm-up.
``--breakdown`` adds each trained tree's round split into its public steps (``propose``,
``verify_tree``, ``accept``; each a separate jitted call, so host dispatch included) beside the
in-loop round time (loop seconds / max rounds of a row) and the vanilla step (seconds / tokens
of a row).
Writes JSON to ``benchmarks/results/spec_decode_<platform>_b<batch>.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

import edgellm_fn as ef
from edgellm_fn.engine.xla_spec import XlaSpecBaseEngine, load_spec_engines
from edgellm_fn.models.eagle3 import SpecDecodeConfig
from edgellm_fn.models.eagle3_loader import random_eagle3_checkpoint
from edgellm_fn.runtime import loops
from edgellm_fn.runtime import spec_decode as sd
from edgellm_fn.testing.oracle_draft import OracleDraftEngine, oracle_dims

DEMO = pathlib.Path(ef.__file__).parent / "assets" / "demo_model"
DEMO_HEAD = DEMO.parent / "demo_eagle3"
PROMPTS = ["The cat sat on the", "Once upon a time", "A B C D E F", "def main():"]


def _median(fn, iters: int) -> tuple[float, object]:
    out = jax.block_until_ready(fn())  # compile + warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _round_breakdown(base, draft, ids, lengths, rounds: int = 8) -> dict[str, float]:
    """Median milliseconds of each public step over ``rounds`` rounds after a prefill."""
    state = sd.spec_prefill(
        base, draft, sd.create_spec_state(base.bundle, ids.shape[0]), ids, lengths
    )
    times: dict[str, list[float]] = {"propose": [], "verify_tree": [], "accept": []}
    steps = (
        ("propose", lambda s: sd.propose(draft, s)),
        ("verify_tree", lambda s: sd.verify_tree(base, s)),
        ("accept", lambda s: sd.accept(base, draft, s)[0]),
    )
    for _ in range(rounds + 1):  # the first round compiles
        for name, fn in steps:
            t0 = time.perf_counter()
            state = jax.block_until_ready(fn(state))
            times[name].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v[1:]) for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEMO))
    ap.add_argument(
        "--draft", default=None, help="trained EAGLE3 head (default: the demo's, with the demo)"
    )
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--new", type=int, default=64, help="max new tokens per row")
    ap.add_argument("--trees", nargs="+", default=["1x4x5", "4x3x16"], help="KxSTEPSxV")
    ap.add_argument(
        "--drafts",
        nargs="+",
        default=["trained", "random", "oracle"],
        choices=["trained", "random", "oracle"],
    )
    ap.add_argument("--kv-capacity", type=int, default=None, help="default: prompt + new + tree")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--breakdown", action="store_true", help="time a round's steps (trained)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--platform", default=jax.default_backend())
    args = ap.parse_args(argv)
    trained = args.draft
    if (
        trained is None
        and pathlib.Path(args.model) == DEMO
        and (DEMO_HEAD / "config.json").is_file()
    ):
        trained = str(DEMO_HEAD)

    model, params = ef.load_checkpoint(args.model, dtype=args.dtype)
    trees = [tuple(int(x) for x in t.split("x")) for t in args.trees]
    kv_capacity = args.kv_capacity or -(-(32 + args.new + max(v for *_, v in trees)) // 64) * 64
    limits = dict(max_batch_size=args.batch, max_input_len=32, kv_capacity=kv_capacity)
    cfg = ef.EngineConfig.create(model, dtype=args.dtype, **limits)
    tok = ef.Tokenizer.from_dir(args.model, vocab_size=model.vocab_size)
    prompts = [tok.encode(PROMPTS[i % len(PROMPTS)]) for i in range(args.batch)]
    ids, lengths = ef.pad_prompts(prompts, 32)
    van = ef.XlaEngine(cfg, params, kernels="off")
    eos = model.eos_token_ids
    lim = loops.token_limits(van, lengths, args.new)
    samp, sparams = ef.make_sampling_params(args.batch, vocab_size=model.vocab_size, top_k=1)

    def vanilla(engine):
        state = ef.prefill(engine, ef.create_state(cfg, args.batch), ef.embed(engine, ids), lengths)
        return ef.decode_while(
            engine,
            state,
            samp,
            sparams,
            jax.random.PRNGKey(0),
            lim,
            eos_ids=eos,
            max_new_tokens=args.new,
        )[1]

    def vanilla_row(name: str, engine) -> tuple[dict, float, object]:
        t, res = _median(lambda: vanilla(engine), args.iters)
        n = int(np.sum(np.asarray(res.num_tokens)))
        row = {"draft": name, "tree": None, "seconds": t, "tokens": n, "tokens_per_s": n / t}
        return {**row, "mean_accepted": 1.0}, t, res

    first, t_van, vres = vanilla_row("none", van)
    n_tokens = first["tokens"]
    rows = [{**first, "speedup": 1.0}]
    fast = ef.XlaEngine(cfg, params, kernels="auto")
    if fast.decode_path(args.batch)[0] == "kernels":
        # The fused-kernel vanilla path (the spec base runs the reference layers: the fused
        # kernels take no tree mask), as a second reference point.
        row, t_fast, _ = vanilla_row("none (fused kernels)", fast)
        rows.append({**row, "speedup": t_van / t_fast})
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        layers = model.num_hidden_layers
        draft_dir = random_eagle3_checkpoint(
            pathlib.Path(tmp) / "draft", model, aux_layer_ids=(1, layers // 2, layers - 1)
        )
        for tree, (k, steps, v) in zip(args.trees, trees, strict=True):
            shape = dict(tree_topk=k, tree_steps=steps, verify_size=v)
            pairs = {}
            if "random" in args.drafts:
                pairs["random"] = load_spec_engines(
                    args.model, draft_dir, dtype=args.dtype, **shape, **limits
                )
            if trained and "trained" in args.drafts:
                pairs["trained"] = load_spec_engines(
                    args.model, trained, dtype=args.dtype, **shape, **limits
                )
            bundle = SpecDecodeConfig(
                base=cfg, draft=oracle_dims(model, (0, 1, 2)), max_verify_tree_size=v, **shape
            )
            if "oracle" in args.drafts:
                base = XlaSpecBaseEngine(bundle, params)
                pairs["oracle"] = (base, OracleDraftEngine.from_base(base))
            for name, (b, d) in pairs.items():

                def spec(b=b, d=d):
                    state = sd.spec_prefill(
                        b, d, sd.create_spec_state(b.bundle, args.batch), ids, lengths
                    )
                    return sd.spec_decode_while(
                        b, d, state, lim, eos_ids=eos, max_new_tokens=args.new
                    )[1]

                t, res = _median(spec, args.iters)
                res = jax.device_get(res)
                extra = {}
                if args.breakdown and name == "trained":
                    extra["round_ms"] = _round_breakdown(b, d, ids, lengths)
                    extra["round_ms_in_loop"] = 1e3 * t / int(np.max(res.rounds))
                    extra["vanilla_step_ms"] = 1e3 * t_van / int(np.max(vres.num_tokens))
                    print(f"  {tree}: {extra}")
                n = vres.tokens.shape[1]
                equal = bool((np.asarray(res.tokens)[:, :n] == np.asarray(vres.tokens)).all())
                ok &= equal
                rows.append(
                    {
                        "draft": name,
                        "tree": tree,
                        "seconds": t,
                        "tokens": n_tokens,
                        "tokens_per_s": n_tokens / t,
                        "mean_accepted": res.mean_accepted(),
                        "speedup": t_van / t,
                        "tokens_equal_vanilla": equal,
                        **extra,
                    }
                )
    for r in rows:
        print(
            f"{r['draft']:21} {r['tree'] or '-':8} {r['tokens_per_s']:9.1f} tok/s  "
            f"accepted/step {r['mean_accepted']:.2f}  x{r['speedup']:.2f}"
            + ("" if r.get("tokens_equal_vanilla", True) else "  TOKENS DIFFER")
        )
    name = f"spec_decode_{args.platform}_b{args.batch}.json"
    out = pathlib.Path(__file__).parent / "results" / name
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "batch": args.batch,
                "new": args.new,
                "dtype": args.dtype,
                "kv_capacity": kv_capacity,
                "trained_draft": trained,
                "device": str(jax.devices()[0]),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
