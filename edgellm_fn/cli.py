"""``edgellm-fn``: generate, inspect, build, bench and demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .dtypes import FLOAT_DTYPES
from .engine.providers import CHOICES, PROVIDER_HELP, TENSORRT_BUILDERS
from .errors import ConfigError, InputError


def _add_limits(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch", type=int, default=4, help="xla: max batch size")
    p.add_argument("--max-input-len", type=int, default=256, help="xla: longest prompt")
    p.add_argument("--kv-capacity", type=int, default=512, help="xla: KV slots per row")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, default=None)
    p.add_argument("--provider", choices=CHOICES, default=None, help=PROVIDER_HELP)
    p.add_argument(
        "--vocab-map", default=None, help="xla: a reduced vocabulary (`reduce-vocab --out` DIR)"
    )


def _engine(args, lora_limits: tuple[int, int] = (0, 0)):
    from .engine.loading import load_engine

    return load_engine(
        args.model,
        provider=args.provider,
        max_batch_size=args.max_batch,
        max_input_len=args.max_input_len,
        kv_capacity=args.kv_capacity,
        dtype=args.dtype,
        max_lora_rank=lora_limits[0],
        max_loras=lora_limits[1],
        vocab_map=args.vocab_map,
    )


def _lora_paths(args, batch) -> dict[str, str]:
    """``available_lora_weights`` of the request file plus every ``--lora NAME=DIR``."""
    paths = dict(batch.available_lora_weights)
    for item in args.lora or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"generate: --lora {item!r} (expected NAME=DIR)")
        paths[name] = path
    return paths


def cmd_generate(args) -> int:
    from .runtime.generate import generate
    from .text.requests import Request, RequestBatch, load_requests, responses_json
    from .text.tokenizer import Tokenizer

    if (args.prompt is None) == (args.input_file is None):
        raise InputError("generate: pass exactly one of --prompt TEXT or --input-file REQ.json")
    if args.lora_name and args.input_file:
        raise InputError(
            "generate: --lora-name with --input-file (expected --prompt); a request file names "
            "each request's adapter in its lora_name field"
        )
    from .runtime.gen_defaults import CLI_BASE, GenerationDefaults

    # Unset flags take the checkpoint's generation_config.json values (else greedy, 64 tokens).
    d = GenerationDefaults.from_dir(args.model, base=CLI_BASE)
    if args.input_file:
        batch = load_requests(args.input_file)
    else:
        batch = RequestBatch(
            batch_size=None,
            temperature=d.resolve("temperature", args.temperature),
            top_p=d.resolve("top_p", args.top_p),
            top_k=d.resolve("top_k", args.top_k),
            max_generate_length=d.resolve("max_new_tokens", args.max_new_tokens),
            apply_chat_template=args.chat,
            requests=[
                Request(
                    messages=[{"role": "user", "content": args.prompt}],
                    stop=[],
                    logit_bias={},
                    num_logprobs=0,
                    lora_name=args.lora_name or None,
                )
            ],
        )
    from .runtime.lora import load_lora_bank, lora_limits

    paths = _lora_paths(args, batch)
    engine = _engine(args, lora_limits(paths))
    bank = load_lora_bank(engine.config, paths) if paths else None
    tokenizer = Tokenizer.from_dir(args.model, vocab_size=engine.config.model.vocab_size)
    prompts = [
        encode_request(tokenizer, r.messages, batch.apply_chat_template) for r in batch.requests
    ]
    streaming = args.output_file is None and len(prompts) == 1 and args.loop == "python"
    completions = generate(
        engine,
        tokenizer,
        prompts,
        max_new_tokens=batch.max_generate_length,
        temperature=batch.temperature,
        top_p=batch.top_p,
        top_k=batch.top_k,
        min_p=d.resolve("min_p", args.min_p),
        repetition_penalty=d.resolve("repetition_penalty", args.repetition_penalty),
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        logit_bias=[r.logit_bias for r in batch.requests],
        num_logprobs=[r.num_logprobs for r in batch.requests],
        stop=[r.stop for r in batch.requests],
        seed=args.seed,
        batch_size=batch.batch_size,
        loop=args.loop,
        on_text=(lambda i, s: print(s, end="", flush=True, file=sys.stderr)) if streaming else None,
        lora=bank,
        lora_names=[r.lora_name for r in batch.requests],
    )
    if streaming:
        print(file=sys.stderr)
    text = json.dumps(responses_json(completions), indent=2, ensure_ascii=False, allow_nan=False)
    if args.output_file:
        Path(args.output_file).write_text(text + "\n")
    else:
        print(text)
    return 0


def encode_request(tokenizer, messages: list[dict], chat: bool) -> list[int]:
    """Chat-templated (special tokens come from the template) or plain joined contents."""
    if chat and tokenizer.chat_templates:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode("\n".join(m["content"] for m in messages))


def cmd_inspect(args) -> int:
    engine = _engine(args)
    spec = engine.spec
    cfg = engine.config
    print(
        f"engine: {engine.provider}  model: "
        f"{cfg.model.architecture}  dtype: {cfg.dtype}  kv: {cfg.kv_dtype}"
    )
    for i, p in enumerate(spec.profiles):
        print(
            f"profile {i}: batch {p.batch[0]}..{p.batch[1]}  seq_len {p.seq_len[0]}..{p.seq_len[1]}"
        )
    aliases = dict(spec.aliases)
    for b in spec.bindings:
        dims = " x ".join(
            d if isinstance(d, str) else str(d) if isinstance(d, int) else "*".join(d)
            for d in b.shape
        )
        alias = f"  (aliases {aliases[b.name]})" if b.name in aliases else ""
        print(f"  {b.io:3} {b.name:24} {b.dtype:9} [{dims}]{alias}")
    return 0


def cmd_bench(args) -> int:
    from .bench.command import run_bench

    return run_bench(args)


def cmd_build(args) -> int:
    from rich.progress import Progress

    from .engine.callback.build import build_engine

    with Progress(transient=True) as bar:
        task = bar.add_task("build", total=1.0)
        out = build_engine(
            args.model,
            args.out,
            args.provider,
            args.max_batch,
            args.max_input_len,
            args.kv_capacity,
            dtype=args.dtype,
            builder=args.builder,
            progress=lambda stage, frac: bar.update(task, completed=frac, description=stage),
            max_lora_rank=args.max_lora_rank,
            max_loras=args.max_loras,
            vocab_map=args.vocab_map,
        )
    print(f"engine directory: {out}")
    return 0


def cmd_reduce_vocab(args) -> int:
    from .text.reduce_vocab import reduce_vocab

    path = reduce_vocab(args.model, args.input_file, args.size, args.out)
    print(f"vocab map: {path}")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from .serve.app import create_app
    from .text.tokenizer import Tokenizer

    engine = _engine(args)
    tokenizer = Tokenizer.from_dir(args.model, vocab_size=engine.config.model.vocab_size)
    app = create_app(
        engine,
        tokenizer,
        model_name=Path(args.model).name,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
    )
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=10)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model)


def build_parser() -> argparse.ArgumentParser:
    """The ``edgellm-fn`` argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(prog="edgellm-fn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text for a prompt or a request file")
    g.add_argument("--model", required=True, help="checkpoint or engine directory")
    g.add_argument("--prompt")
    g.add_argument("--input-file", help="Edge-LLM request JSON")
    g.add_argument("--output-file", help="response JSON (stdout when omitted)")
    unset = " (default: generation_config.json, else %s)"
    g.add_argument("--max-new-tokens", type=int, default=None, help=unset % 64)
    g.add_argument("--temperature", type=float, default=None, help=unset % 1.0)
    g.add_argument("--top-p", type=float, default=None, help=unset % 1.0)
    g.add_argument("--top-k", type=int, default=None, help="1 = greedy, 0 = off" + unset % 1)
    g.add_argument("--min-p", type=float, default=None, help=unset % 0.0)
    g.add_argument("--repetition-penalty", type=float, default=None, help=unset % 1.0)
    g.add_argument("--presence-penalty", type=float, default=0.0)
    g.add_argument("--frequency-penalty", type=float, default=0.0)
    g.add_argument("--no-chat", dest="chat", action="store_false", help="skip the chat template")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--loop", choices=["python", "while"], default="python")
    g.add_argument(
        "--lora",
        action="append",
        metavar="NAME=DIR",
        help="a PEFT LoRA adapter directory served as NAME (repeatable)",
    )
    g.add_argument("--lora-name", help="the --lora adapter the --prompt runs on")
    _add_limits(g)
    g.set_defaults(fn=cmd_generate)

    i = sub.add_parser("inspect", help="print the engine spec: bindings, shapes, profiles")
    i.add_argument("--model", required=True)
    _add_limits(i)
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser(
        "bench", help="decode/prefill vs measured roofline, with peers (see BENCHMARKS.md)"
    )
    from .bench.command import add_bench_arguments

    add_bench_arguments(b)
    b.set_defaults(fn=cmd_bench)

    bl = sub.add_parser("build", help="export and build an engine directory")
    bl.add_argument("--model", required=True, help="checkpoint directory")
    bl.add_argument("--out", required=True, help="engine directory to write")
    bl.add_argument("--provider", choices=CHOICES, required=True, help=PROVIDER_HELP)
    bl.add_argument(
        "--builder",
        choices=TENSORRT_BUILDERS,
        default=None,
        help="tensorrt: NVIDIA TensorRT (default) or TensorRT-RTX",
    )
    bl.add_argument("--max-batch", type=int, default=4)
    bl.add_argument("--max-input-len", type=int, default=128)
    bl.add_argument("--kv-capacity", type=int, default=256)
    bl.add_argument("--dtype", choices=FLOAT_DTYPES, default=None)
    bl.add_argument("--max-lora-rank", type=int, default=0, help="LoRA bank rank (0: no LoRA)")
    bl.add_argument("--max-loras", type=int, default=0, help="LoRA adapter slots")
    bl.add_argument("--vocab-map", default=None, help="a reduced vocabulary (`reduce-vocab` DIR)")
    bl.set_defaults(fn=cmd_build)

    rv = sub.add_parser(
        "reduce-vocab", help="choose a reduced vocabulary from the tokens of a request file"
    )
    rv.add_argument("--model", required=True, help="checkpoint directory")
    rv.add_argument("--input-file", required=True, help="Edge-LLM request JSON")
    rv.add_argument("--size", type=int, required=True, help="ids to keep")
    rv.add_argument("--out", required=True, help="directory for vocab_map.safetensors")
    rv.set_defaults(fn=cmd_reduce_vocab)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server")
    sv.add_argument("--model", required=True, help="checkpoint or engine directory")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    _add_limits(sv)
    sv.set_defaults(fn=cmd_serve)

    d = sub.add_parser("demo", help="generate with the embedded demo model")
    d.add_argument("--model", default=None, help="another checkpoint instead of the demo model")
    d.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, InputError, ValueError) as e:
        print(f"edgellm-fn {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
