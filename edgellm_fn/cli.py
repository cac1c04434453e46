"""``edgellm-fn``: generate, inspect, build, bench and demo."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

from .config import LIMITS
from .config.defaults import DEFAULTS, FLAGS, MAX_SEED
from .dtypes import FLOAT_DTYPES
from .engine.providers import CHOICES, PROVIDER_HELP, TENSORRT_BUILDERS
from .errors import ConfigError, InputError

GENERATE_HELP = f"""\
Generate text for one --prompt or for every request of an --input-file (Edge-LLM request JSON).

Output: with --prompt, the text is streamed to stdout as plain text (--json prints the response
JSON instead); with --input-file, the response JSON goes to stdout. --output-file writes the
response JSON to a file in either mode. A note on stderr says when a row stopped because its KV
cache was full rather than at --max-new-tokens.

Sampling: the checkpoint's generation_config.json when it has one (do_sample, temperature,
top_p, top_k, min_p, repetition_penalty, max_new_tokens), else greedy. Any of --temperature,
--top-p, --top-k turns sampling on; the others then default to \
temperature {DEFAULTS["temperature"]:g}, top-p {DEFAULTS["top_p"]:g} and \
top-k {DEFAULTS["top_k"]} (off).
--temperature 0 or --top-k 1 is greedy.

With --input-file, a flag given on the command line overrides the file's top-level field:
--max-new-tokens (max_generate_length), --temperature, --top-p, --top-k, --batch-size
(batch_size), --chat/--no-chat (apply_chat_template). Fields the file and the flags both leave
out take the defaults shown below, the same as the Python API's (edgellm_fn.config.defaults).
"""


def _int_arg(low: int, high: int | None = None):
    """An argparse type: an integer in ``[low, high]`` (argparse names the flag on error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{value} (expected an integer {bound})")
        return value

    parse.__name__ = "integer"
    return parse


def _float_arg(low: float, high: float | None = None, *, open_low: bool = False):
    """An argparse type: a finite number in ``[low, high]`` (``(low, high]`` with open_low)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        too_low = value <= low if open_low else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            left = "(" if open_low else "["
            bound = f"in {left}{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} (expected a finite number {bound})")
        return value

    parse.__name__ = "number"
    return parse


def _add_limits(p: argparse.ArgumentParser, *, provider_required: bool = False) -> None:
    """The engine limit flags, with the one set of defaults (``defaults.DEFAULTS``)."""
    size = _int_arg(1)
    xla = "" if provider_required else "xla: "  # an engine directory has its built limits
    p.add_argument(
        "--max-batch",
        type=size,
        default=DEFAULTS["max_batch_size"],
        help=f"{xla}max batch size (default: %(default)s)",
    )
    p.add_argument(
        "--max-input-len",
        type=size,
        default=DEFAULTS["max_input_len"],
        help=f"{xla}longest prompt in tokens (default: %(default)s)",
    )
    p.add_argument(
        "--kv-capacity",
        type=size,
        default=DEFAULTS["kv_capacity"],
        help=f"{xla}KV slots per row: prompt + generated tokens (default: %(default)s)",
    )
    p.add_argument(
        "--dtype", choices=FLOAT_DTYPES, default=None, help="default: the checkpoint's dtype"
    )
    p.add_argument(
        "--provider", choices=CHOICES, required=provider_required, default=None, help=PROVIDER_HELP
    )
    p.add_argument(
        "--vocab-map", default=None, help="a reduced vocabulary (`reduce-vocab --out` DIR)"
    )


def _add_tensor_parallel(p: argparse.ArgumentParser) -> None:
    """``--tensor-parallel N`` (xla provider; ``engine/sharding.py``)."""
    p.add_argument(
        "--tensor-parallel",
        type=_int_arg(1),
        default=1,
        metavar="N",
        help="xla: split the model over the first N devices (heads, MLP, vocabulary; few KV "
        "heads replicated); NCCL_NVLS_ENABLE=0 is set (default: %(default)s)",
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
        tensor_parallel=getattr(args, "tensor_parallel", 1),
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


def _check_prompt_text(text: str) -> None:
    """Undecodable bytes in argv arrive as lone surrogates (``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raw = os.fsencode(text[e.start : e.end]) if text[e.start] >= "\udc80" else b""
        raise InputError(
            f"generate: --prompt has an undecodable character at index {e.start} "
            f"{raw or text[e.start]!r} (expected UTF-8 text); check the terminal's encoding"
        ) from None


def _check_output_file(path: str, input_file: str | None) -> None:
    """Refuses an output path that cannot be written (checked before the model is loaded)."""
    out = Path(path)
    if out.is_dir():
        raise InputError(f"generate: --output-file={path!r} is a directory (expected a file path)")
    parent = out.absolute().parent
    if not parent.is_dir():
        raise InputError(
            f"generate: --output-file={path!r}: directory {str(parent)!r} does not exist "
            "(expected an existing directory); create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InputError(
            f"generate: --output-file={path!r} cannot be written (expected a writable file in a "
            "writable directory)"
        )
    if input_file is not None and out.resolve() == Path(input_file).resolve():
        raise InputError(
            f"generate: --output-file={path!r} is the --input-file (expected another path); "
            "the request file would be overwritten"
        )


def _checkpoint_defaults(args):
    from .runtime.gen_defaults import GenerationDefaults

    return GenerationDefaults.from_dir(args.model)


def _request_batch(args):
    """The request file (flags override its top-level fields) or the one --prompt request."""
    from .text.requests import Request, RequestBatch, load_requests

    if args.input_file:
        batch = load_requests(args.input_file)
        overrides = {
            "max_generate_length": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "top_k": args.top_k,
            "batch_size": args.batch_size,
            "apply_chat_template": args.chat,
        }
        return dataclasses.replace(batch, **{k: v for k, v in overrides.items() if v is not None})
    _check_prompt_text(args.prompt)
    return RequestBatch(
        batch_size=args.batch_size,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_generate_length=args.max_new_tokens or _checkpoint_defaults(args).max_new_tokens,
        apply_chat_template=DEFAULTS["apply_chat_template"] if args.chat is None else args.chat,
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


def cmd_generate(args) -> int:
    from .runtime.generate import generate
    from .text.requests import responses_text
    from .text.tokenizer import Tokenizer

    if (args.prompt is None) == (args.input_file is None):
        raise InputError("generate: pass exactly one of --prompt TEXT or --input-file REQ.json")
    if args.lora_name and args.input_file:
        raise InputError(
            "generate: --lora-name with --input-file (expected --prompt); a request file names "
            "each request's adapter in its lora_name field"
        )
    if args.output_file is not None:
        _check_output_file(args.output_file, args.input_file)
    batch = _request_batch(args)  # every input is checked before the model is loaded
    if args.draft:
        return _cmd_generate_spec(args, batch, encode_request)
    from .runtime.lora import load_lora_bank, lora_limits

    paths = _lora_paths(args, batch)
    engine = _engine(args, lora_limits(paths))
    bank = load_lora_bank(engine.config, paths) if paths else None
    tokenizer = Tokenizer.from_dir(args.model, vocab_size=engine.config.model.vocab_size)
    prompts = [
        encode_request(tokenizer, r.messages, batch.apply_chat_template) for r in batch.requests
    ]
    plain = args.prompt is not None and not args.json
    # Nothing asked: generate() takes the checkpoint's generation_config.json (else greedy).
    asked = (batch.temperature, batch.top_p, batch.top_k) != (None, None, None)
    temperature, top_p, top_k = batch.sampling() if asked else (None, None, None)
    completions = generate(
        engine,
        tokenizer,
        prompts,
        max_new_tokens=batch.max_generate_length,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        logit_bias=[r.logit_bias for r in batch.requests],
        num_logprobs=[r.num_logprobs for r in batch.requests],
        stop=[r.stop for r in batch.requests],
        seed=args.seed,
        batch_size=batch.batch_size,
        loop=args.loop,
        on_text=(lambda i, s: print(s, end="", flush=True)) if plain else None,
        lora=bank,
        lora_names=[r.lora_name for r in batch.requests],
    )
    if plain:
        print()
    for i, c in enumerate(completions):
        if c.finish_reason == "length" and c.token_limit < batch.max_generate_length:
            print(
                f"edgellm-fn generate: note: request {i} stopped after {len(c.tokens)} tokens, "
                f"not --max-new-tokens={batch.max_generate_length}: its {c.prompt_tokens}-token "
                f"prompt and the output filled the KV cache (--kv-capacity="
                f"{engine.config.kv_capacity}); raise --kv-capacity for longer output",
                file=sys.stderr,
            )
    text = responses_text(completions)
    if args.output_file:
        Path(args.output_file).write_text(text + "\n", encoding="utf-8")
    elif not plain:
        print(text)
    return 0


def encode_request(tokenizer, messages: list[dict], chat: bool, options=None) -> list[int]:
    """Chat-templated (special tokens come from the template; ``options``: the template's
    ``chat_template_kwargs``) or plain joined contents."""
    from .runtime.text_api import encode_messages

    return encode_messages(tokenizer, messages, chat, options)


def _add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """``--draft`` (EAGLE3 speculative decoding) and the tree shape of ``generate``."""
    p.add_argument("--draft", help="EAGLE3 draft checkpoint directory: speculative decoding")
    p.add_argument(
        "--tree-topk", type=_int_arg(1), default=4, help="draft: children per expanded node"
    )
    p.add_argument(
        "--tree-steps", type=_int_arg(1), default=4, help="draft: tree levels below the root"
    )
    p.add_argument(
        "--verify-size", type=_int_arg(1), default=16, help="tree tokens verified per round"
    )


def _cmd_generate_spec(args, batch, encode_request) -> int:
    """Runs ``spec_decode_generate`` for a request batch; the response JSON gains
    ``"spec_decode": {"rounds": R, "accepted_per_round": x.xx}``."""
    from .engine.xla_spec import load_spec_engines
    from .runtime.spec_generate import spec_decode_generate
    from .text.requests import responses_json
    from .text.tokenizer import Tokenizer

    if args.provider not in (None, "xla"):
        raise InputError(
            f"generate: --draft runs on the xla provider (got --provider {args.provider})"
        )
    if getattr(args, "tensor_parallel", 1) > 1:
        raise InputError(
            f"generate: --draft with --tensor-parallel {args.tensor_parallel} (expected 1); "
            "speculative decoding runs on one device"
        )
    temperature, _, top_k = batch.sampling()
    if not (top_k == 1 or temperature <= 0):
        raise InputError(
            f"generate: --draft decodes greedily (expected --top-k 1 or --temperature 0, got "
            f"top_k={top_k}, temperature={temperature})"
        )
    if any(r.logit_bias or r.num_logprobs for r in batch.requests):
        raise InputError("generate: --draft does not support logit_bias or num_logprobs yet")
    if args.lora or any(r.lora_name for r in batch.requests) or args.vocab_map:
        raise InputError("generate: --draft does not support LoRA adapters or --vocab-map yet")
    base, draft = load_spec_engines(
        args.model,
        args.draft,
        tree_topk=args.tree_topk,
        tree_steps=args.tree_steps,
        verify_size=args.verify_size,
        max_batch_size=args.max_batch,
        max_input_len=args.max_input_len,
        kv_capacity=args.kv_capacity,
        dtype=args.dtype,
    )
    tokenizer = Tokenizer.from_dir(args.model, vocab_size=base.config.model.vocab_size)
    prompts = [
        encode_request(tokenizer, r.messages, batch.apply_chat_template) for r in batch.requests
    ]
    plain = args.prompt is not None and not args.json  # as vanilla generate: text to stdout
    completions, stats = spec_decode_generate(
        base,
        draft,
        tokenizer,
        prompts,
        max_new_tokens=batch.max_generate_length,
        stop=[r.stop for r in batch.requests],
        batch_size=batch.batch_size,
        loop=args.loop,
        on_text=(lambda i, s: print(s, end="", flush=True))
        if plain and args.loop == "python"
        else None,
    )
    if plain:
        print("" if args.loop == "python" else completions[0].text)
        print(f"edgellm-fn generate: spec_decode {json.dumps(stats.to_json())}", file=sys.stderr)
    out = responses_json(completions)
    out["spec_decode"] = stats.to_json()
    text = json.dumps(out, indent=2, ensure_ascii=False, allow_nan=False)
    if args.output_file:
        Path(args.output_file).write_text(text + "\n", encoding="utf-8")
    elif not plain:
        print(text)
    return 0


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

    from .engine.callback.build import build_engine, check_out_dir

    check_out_dir(Path(args.model), Path(args.out))  # before the progress bar starts
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


def cmd_chat(args) -> int:
    from .serve.chat import run_chat
    from .text.tokenizer import Tokenizer

    engine = _engine(args)
    tokenizer = Tokenizer.from_dir(args.model, vocab_size=engine.config.model.vocab_size)
    return run_chat(args, engine, tokenizer)


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
        prefix_cache=args.prefix_cache,
    )
    uvicorn.run(app, host=args.host, port=args.port, timeout_graceful_shutdown=10)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(model=args.model)


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate text for a prompt or a request file",
        description=GENERATE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("--model", required=True, help="checkpoint or engine directory")
    g.add_argument("--prompt", help="one prompt; its text is streamed to stdout")
    g.add_argument("--input-file", help="Edge-LLM request JSON (flags override its fields)")
    g.add_argument("--output-file", help="write the response JSON here (its directory must exist)")
    g.add_argument(
        "--json", action="store_true", help="with --prompt: print the response JSON, not the text"
    )
    g.add_argument(
        "--max-new-tokens",
        type=_int_arg(1, LIMITS["max_kv_cache_capacity"]),
        help=f"tokens to generate per request, at most what the KV cache holds (default: "
        f"{DEFAULTS['max_new_tokens']}, or the file's max_generate_length)",
    )
    g.add_argument(
        "--temperature",
        type=_float_arg(0.0),
        help=f"sampling temperature; 0 is greedy (default: greedy; {DEFAULTS['temperature']:g} "
        "once another sampling flag is given)",
    )
    g.add_argument(
        "--top-p",
        type=_float_arg(0.0, 1.0, open_low=True),
        help=f"nucleus sampling in (0, 1] (default: {DEFAULTS['top_p']:g}, off)",
    )
    g.add_argument(
        "--top-k",
        type=_int_arg(0, LIMITS["vocab_size"]),
        help=f"sample among the k most likely ids; 1 is greedy, 0 is off (default: greedy; "
        f"{DEFAULTS['top_k']} once another sampling flag is given)",
    )
    unset = "(default: the checkpoint's generation_config.json, else %s)"
    g.add_argument("--min-p", type=_float_arg(0.0, 1.0), help="min-p filter in [0, 1] " + unset % 0)
    g.add_argument(
        "--repetition-penalty",
        type=_float_arg(0.0, 100.0, open_low=True),
        help="transformers' repetition penalty over prompt and output ids; 1 is off " + unset % 1,
    )
    g.add_argument(
        "--presence-penalty",
        type=_float_arg(-2.0, 2.0),
        default=0.0,
        help="OpenAI's presence penalty in [-2, 2] (default: %(default)s)",
    )
    g.add_argument(
        "--frequency-penalty",
        type=_float_arg(-2.0, 2.0),
        default=0.0,
        help="OpenAI's frequency penalty in [-2, 2] (default: %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=_int_arg(1),
        help="requests per batch (default: --max-batch, or the file's batch_size)",
    )
    g.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="apply the checkpoint's chat template (default: on when it has one, or the "
        "file's apply_chat_template)",
    )
    g.add_argument(
        "--seed",
        type=_int_arg(0, MAX_SEED),
        default=DEFAULTS["seed"],
        help="PRNG seed, 0..2**63-1 (default: %(default)s)",
    )
    g.add_argument(
        "--loop",
        choices=["python", "while"],
        default=DEFAULTS["loop"],
        help="python: streams, stops early on stop strings; while: one jitted loop (default: "
        "%(default)s)",
    )
    g.add_argument(
        "--lora",
        action="append",
        metavar="NAME=DIR",
        help="a PEFT LoRA adapter directory served as NAME (repeatable)",
    )
    g.add_argument("--lora-name", help="the --lora adapter the --prompt runs on")
    _add_limits(g)
    _add_tensor_parallel(g)
    _add_spec_arguments(g)
    g.set_defaults(fn=cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    """The ``edgellm-fn`` argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(prog="edgellm-fn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)

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
    bl.add_argument(
        "--out",
        required=True,
        help="engine directory to write: new or empty, outside the checkpoint (never overwritten)",
    )
    bl.add_argument(
        "--builder",
        choices=TENSORRT_BUILDERS,
        default=None,
        help="tensorrt: NVIDIA TensorRT (default) or TensorRT-RTX",
    )
    _add_limits(bl, provider_required=True)
    bl.add_argument(
        "--max-lora-rank", type=_int_arg(0), default=0, help="LoRA bank rank (0: no LoRA)"
    )
    bl.add_argument("--max-loras", type=_int_arg(0), default=0, help="LoRA adapter slots")
    bl.set_defaults(fn=cmd_build)

    rv = sub.add_parser(
        "reduce-vocab", help="choose a reduced vocabulary from the tokens of a request file"
    )
    rv.add_argument("--model", required=True, help="checkpoint directory")
    rv.add_argument("--input-file", required=True, help="Edge-LLM request JSON")
    rv.add_argument("--size", type=_int_arg(1), required=True, help="ids to keep")
    rv.add_argument("--out", required=True, help="directory for vocab_map.safetensors")
    rv.set_defaults(fn=cmd_reduce_vocab)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server")
    sv.add_argument("--model", required=True, help="checkpoint or engine directory")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_int_arg(0, 65535), default=8000)
    sv.add_argument("--max-queue", type=_int_arg(1), default=64, help="waiting requests before 429")
    sv.add_argument(
        "--prefix-cache",
        type=_int_arg(0),
        default=0,
        metavar="N",
        help="keep the KV of the last N prompts; a request reuses its longest cached prefix "
        "(a chat's history) and prefills only the rest (0: off)",
    )
    _add_limits(sv)
    _add_tensor_parallel(sv)
    sv.set_defaults(fn=cmd_serve)

    ch = sub.add_parser("chat", help="a multi-turn chat in the terminal (streamed replies)")
    ch.add_argument("--model", required=True, help="checkpoint or engine directory")
    ch.add_argument("--system", help="the system prompt")
    ch.add_argument("--max-new-tokens", type=_int_arg(1), help="tokens per reply")
    ch.add_argument("--temperature", type=_float_arg(0.0), help="as generate's")
    ch.add_argument("--top-p", type=_float_arg(0.0, 1.0, open_low=True), help="as generate's")
    ch.add_argument("--top-k", type=_int_arg(0), help="as generate's; 1 is greedy")
    ch.add_argument("--seed", type=_int_arg(0, MAX_SEED), default=DEFAULTS["seed"])
    _add_limits(ch)
    _add_tensor_parallel(ch)
    ch.set_defaults(fn=cmd_chat)

    d = sub.add_parser("demo", help="generate with the embedded demo model")
    d.add_argument("--model", default=None, help="another checkpoint instead of the demo model")
    d.set_defaults(fn=cmd_demo)
    return parser


#: Internal names that appear in error messages, and the ``FLAGS`` key of the flag that sets it.
_NAMES = {
    "max_input_len": "max_input_len",
    "max_kv_cache_capacity": "kv_capacity",
    "kv_capacity": "kv_capacity",
    "kv capacity": "kv_capacity",
    "max_batch_size": "max_batch_size",
    "max_generate_length": "max_new_tokens",
    "max_new_tokens": "max_new_tokens",
    "batch_size": "batch_size",
}


def flag_hint(message: str, parser: argparse.ArgumentParser) -> str:
    """``"; ..."`` naming the flags that set the internal names in ``message`` ("" if none)."""
    options = {s for a in parser._actions for s in a.option_strings}
    hints = []
    for name, key in _NAMES.items():
        flag = FLAGS[key]
        if (
            flag in options
            and flag not in message
            and re.search(rf"(?<!\w){re.escape(name)}\b", message)
            and f"{flag}" not in " ".join(hints)
        ):
            hints.append(f"{name} is set by {flag}")
    return f" [{'; '.join(hints)}]" if hints else ""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "tensor_parallel", 1) > 1:  # before any GPU collective: NVLink multicast off
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    try:
        return args.fn(args)
    except (ConfigError, InputError, ValueError) as e:
        sub = next(a for a in parser._actions if a.dest == "command").choices[args.command]
        print(f"edgellm-fn {args.command}: error: {e}{flag_hint(str(e), sub)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
