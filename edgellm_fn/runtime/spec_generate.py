"""``spec_decode_generate``: ``generate`` with an EAGLE3 draft (greedy), for the CLI and users.

Tokens equal ``generate(..., top_k=1)``'s; the figures of the draft come back alongside.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ..errors import InputError
from ..text.stops import find_stop, partial_stop_length
from ..text.tokenizer import StreamDecoder, Tokenizer
from . import loops, spec_decode
from .generate import Completion, eos_ids_of
from .prompts import bucket_length, pad_prompts


@dataclasses.dataclass(frozen=True, kw_only=True)
class SpecStats:
    """Acceptance figures of one call.

    Attributes:
      rounds: base verify steps, summed over rows.
      accepted: tokens they accepted (bonus tokens included).
    """

    rounds: int
    accepted: int

    @property
    def accepted_per_round(self) -> float:
        return self.accepted / self.rounds if self.rounds else 0.0

    def to_json(self) -> dict:
        return {"rounds": self.rounds, "accepted_per_round": round(self.accepted_per_round, 2)}


def spec_decode_generate(
    base,
    draft,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[Sequence[str]] | None = None,
    batch_size: int | None = None,
    loop: str = "python",
    on_text: Callable[[int, str], None] | None = None,
) -> tuple[list[Completion], SpecStats]:
    """Greedy completions of tokenized prompts with speculative decoding.

    Args:
      base, draft: a spec-decode pair (``engine.xla_spec.load_spec_engines``).
      prompts: token ids per prompt (chat template applied).
      max_new_tokens: per-row limit, clamped to the KV capacity.
      stop: per prompt stop strings.
      batch_size: rows per batch (default and maximum: the engines' max batch size).
      loop: ``"python"`` (streaming, stop strings end a row early) or ``"while"`` (one jit).
      on_text: ``on_text(prompt_index, text_delta)`` while streaming (python loop).

    Raises:
      InputError: empty or too long prompts, an unknown loop, bad batch size.
    """
    spec_decode.check_pair(base, draft)
    cfg = base.config
    if loop not in ("python", "while"):
        raise InputError(f"spec_decode_generate: loop={loop!r} (expected 'python' or 'while')")
    batch_size = batch_size or cfg.max_batch_size
    if not 1 <= batch_size <= cfg.max_batch_size:
        raise InputError(
            f"spec_decode_generate: batch_size={batch_size} (expected 1..max_batch_size="
            f"{cfg.max_batch_size})"
        )
    for i, p in enumerate(prompts):
        if not 1 <= len(p) <= cfg.max_input_len:
            raise InputError(
                f"spec_decode_generate: prompt {i} has {len(p)} tokens (expected "
                f"1..max_input_len={cfg.max_input_len})"
            )
    n = len(prompts)
    stop = [list(s or []) for s in stop] if stop is not None else [[] for _ in range(n)]
    eos = eos_ids_of(base, tokenizer)
    out: list[Completion] = []
    rounds = accepted = 0
    for start in range(0, n, batch_size):
        rows = list(range(start, min(n, start + batch_size)))
        done, res = _batch(
            base,
            draft,
            tokenizer,
            [list(prompts[i]) for i in rows],
            [stop[i] for i in rows],
            eos,
            max_new_tokens,
            loop,
            None if on_text is None else (lambda r, s, o=start: on_text(o + r, s)),
        )
        out.extend(done)
        rounds += int(np.sum(res.rounds))
        accepted += int(np.sum(res.accepted))
    return out, SpecStats(rounds=rounds, accepted=accepted)


def _batch(base, draft, tokenizer, prompts, stop, eos, max_new_tokens, loop, on_text):
    b = len(prompts)
    cfg = base.config
    ids, lengths = pad_prompts(prompts, bucket_length(max(map(len, prompts)), cfg.max_input_len))
    state = spec_decode.create_spec_state(base.bundle, b)
    state = spec_decode.spec_prefill(base, draft, state, ids, lengths)
    limits = loops.token_limits(base, lengths, max_new_tokens)
    decoders = [StreamDecoder(tokenizer) for _ in range(b)]
    texts, streamed = [""] * b, [""] * b

    def on_token(row: int, tok: int) -> None:
        if tok in eos:
            return
        texts[row] += decoders[row].push(tok)
        if on_text is not None:  # never stream a stop string or what may still become one
            text = texts[row]
            hit = find_stop(text, stop[row]) if stop[row] else None
            held = partial_stop_length(text, stop[row]) if stop[row] else 0
            visible = text[: hit[0]] if hit is not None else text[: len(text) - held]
            if len(visible) > len(streamed[row]):
                on_text(row, visible[len(streamed[row]) :])
                streamed[row] = visible

    def should_stop(row: int, tok: int) -> bool:
        return bool(stop[row]) and find_stop(texts[row], stop[row]) is not None

    if loop == "while":
        _, res = spec_decode.spec_decode_while(
            base, draft, state, limits, eos_ids=eos, max_new_tokens=max_new_tokens
        )
        res = jax.device_get(res)
    else:
        _, res = spec_decode.spec_decode_python(
            base,
            draft,
            state,
            limits,
            eos_ids=eos,
            max_new_tokens=max_new_tokens,
            on_token=on_token,
            should_stop=should_stop,
        )
    out = []
    for r in range(b):
        toks = [int(t) for t in res.tokens[r, : int(res.num_tokens[r])]]
        text = tokenizer.decode([t for t in toks if t not in eos])
        hit = find_stop(text, stop[r]) if stop[r] else None
        if hit is not None:
            text = text[: hit[0]]
        reason = "stop" if bool(res.hit_eos[r]) or hit is not None else "length"
        out.append(
            Completion(
                text=text,
                tokens=toks,
                finish_reason=reason,
                logprobs=None,
                prompt_tokens=int(lengths[r]),
            )
        )
    return out, res
