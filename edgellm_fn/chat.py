"""``edgellm-fn chat``: a multi-turn chat in the terminal, replies streamed as they decode.

Each line read from stdin is a user turn; the reply streams to stdout and joins the history.
``/reset`` clears the history, ``/exit`` (or end of input) quits. A turn that would not fit the
engine's ``max_input_len`` is refused with a notice and the history is kept.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from .engine.protocol import Engine
from .errors import InputError
from .runtime.generate import stream
from .runtime.text_api import encode_messages
from .text.tokenizer import Tokenizer


def chat_loop(
    engine: Engine,
    tokenizer: Tokenizer,
    lines: Iterable[str],
    *,
    system: str | None = None,
    out: TextIO | None = None,
    **sampling,
) -> list[dict]:
    """Runs the chat over ``lines`` (user turns), replies to ``out`` (default: stdout); returns
    the final history of messages."""
    out = sys.stdout if out is None else out
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    start = list(history)
    for raw in lines:
        line = raw.rstrip("\n")
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            history = list(start)
            print("(history cleared)", file=out, flush=True)
            continue
        if not line.strip():
            continue
        turn = [*history, {"role": "user", "content": line}]
        n = len(encode_messages(tokenizer, turn))
        if n > engine.config.max_input_len:
            print(
                f"(this turn makes the prompt {n} tokens, more than --max-input-len="
                f"{engine.config.max_input_len}; /reset the history or raise --max-input-len)",
                file=out,
                flush=True,
            )
            continue
        for delta in stream(engine, tokenizer, turn, **sampling):
            print(delta.text, end="", file=out, flush=True)
        print(file=out, flush=True)
        history = [*turn, {"role": "assistant", "content": delta.completion.text}]
    return history


def run_chat(args, engine: Engine, tokenizer: Tokenizer) -> int:
    """The ``chat`` command: prompts on a terminal, reads stdin to its end otherwise."""
    if not tokenizer.chat_templates:
        raise InputError(
            f"chat: the checkpoint {args.model!r} has no chat template (expected one in "
            "tokenizer_config.json or chat_template.jinja); use `generate --prompt` instead"
        )
    interactive = sys.stdin.isatty()

    def lines():
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return
            yield line

    sampling = {
        k: v
        for k, v in dict(
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            max_new_tokens=args.max_new_tokens, seed=args.seed,
        ).items()
        if v is not None
    }  # fmt: skip
    chat_loop(engine, tokenizer, lines(), system=args.system, **sampling)
    return 0
