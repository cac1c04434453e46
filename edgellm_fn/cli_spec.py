"""``edgellm-fn generate --draft DIR``: greedy generation with an EAGLE3 draft (xla provider)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InputError


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    """``--draft`` and the tree shape of ``generate``."""
    p.add_argument("--draft", help="EAGLE3 draft checkpoint directory: speculative decoding")
    p.add_argument("--tree-topk", type=int, default=4, help="draft: children per expanded node")
    p.add_argument("--tree-steps", type=int, default=4, help="draft: tree levels below the root")
    p.add_argument("--verify-size", type=int, default=16, help="tree tokens verified per round")


def cmd_generate_spec(args, batch, encode_request) -> int:
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
