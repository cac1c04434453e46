"""Host-side generation: tokenize, batch, prefill, decode loop, detokenize, stop strings.

This is the facade the CLI and the demo use; research code can call ``steps`` and ``loops``
directly.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from ..config.defaults import DEFAULTS, MAX_SEED, sampling_values
from ..engine.protocol import Engine
from ..errors import InputError, show
from ..state.resources import create_state
from ..text.stops import StopStream, check_stops, find_stop
from ..text.tokenizer import StreamDecoder, Tokenizer
from . import loops, steps
from .gen_defaults import GenerationDefaults, defaults_for
from .lora import LoraBank
from .prompts import bucket_length as bucket_length
from .prompts import pad_prompts
from .sampling import REQUEST_LIMITS, SamplingConfig, check_sampling_values, make_sampling_params
from .text_api import encode_prompts, is_text
from .vocab import reduce_logit_bias


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """One request's result.

    Attributes:
      text: generated text (stop string and EOS excluded).
      tokens: generated ids (EOS included when it ended the row; nothing after the token that
        completed a stop string, with either loop).
      finish_reason: ``"stop"`` (EOS or stop string) or ``"length"``.
      logprobs: per token ``{"token_id", "token", "logprob", "top_logprobs"}``, or None.
      prompt_tokens: number of prompt tokens.
      token_limit: the row's generation limit: ``max_new_tokens`` clamped to what the KV cache
        holds after the prompt; ``finish_reason == "length"`` with ``token_limit <
        max_new_tokens`` means the row stopped because its KV cache was full.
    """

    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: list[dict] | None
    prompt_tokens: int
    token_limit: int = 0


def eos_ids_of(engine: Engine, tokenizer: Tokenizer | None) -> tuple[int, ...]:
    """EOS ids of the model config and the tokenizer (generation_config, eos_token)."""
    ids = set(engine.config.model.eos_token_ids)
    if tokenizer is not None:
        ids |= set(tokenizer.eos_token_ids)
    return tuple(sorted(ids))


def generate(
    engine: Engine,
    tokenizer: Tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int | None = None,
    temperature: float | Sequence[float] | None = None,
    top_p: float | Sequence[float] | None = None,
    top_k: int | Sequence[int] | None = None,
    min_p: float | Sequence[float] | None = None,
    repetition_penalty: float | Sequence[float] | None = None,
    presence_penalty: float | Sequence[float] = 0.0,
    frequency_penalty: float | Sequence[float] = 0.0,
    logit_bias: Sequence[dict | None] | None = None,
    num_logprobs: Sequence[int] | int = DEFAULTS["num_logprobs"],
    stop: Sequence[str | Sequence[str] | None] | None = None,
    seed: int | Sequence[int] = DEFAULTS["seed"],
    batch_size: int | None = None,
    loop: str = DEFAULTS["loop"],
    on_text: Callable[[int, str], None] | None = None,
    sampling: SamplingConfig = REQUEST_LIMITS,
    lora: LoraBank | None = None,
    lora_names: Sequence[str | None] | None = None,
    defaults: GenerationDefaults | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[Completion]:
    """Generates a completion for each prompt.

    Every argument is checked for every prompt before the first batch runs, so a bad request
    fails whole (nothing generated is lost to a later error). Defaults: ``defaults.DEFAULTS``.

    Args:
      engine: any provider.
      tokenizer: for detokenization, stop strings and EOS ids.
      prompts: per prompt its token ids (chat template already applied; each in
        ``[0, vocab_size)``), a string, or chat messages (``runtime/text_api.py`` encodes them
        with the checkpoint's chat template).
      max_new_tokens: generation limit, clamped per row to the KV capacity (see
        ``Completion.token_limit``).
      temperature, top_p, top_k: sampling, one value or one per prompt. When none is given, the
        checkpoint's ``generation_config.json`` decides (``runtime/gen_defaults.py``; greedy
        without one); once one is, the others default to 1, 1 and 0 (off): ``temperature=0.8``
        alone samples (``defaults.sampling_values``). ``top_k == 1`` or ``temperature == 0``:
        greedy.
      min_p: one value or one per prompt in [0, 1]; 0 = off.
      repetition_penalty: ``transformers``' (prompt and output ids); 1 = off.
      presence_penalty, frequency_penalty: OpenAI's (output ids), in [-2, 2].
      (max_new_tokens, min_p, repetition_penalty: None = the checkpoint's
      ``generation_config.json`` value, else ``defaults.DEFAULTS``.)
      logit_bias: per prompt ``{token_id: bias}`` or None.
      num_logprobs: per prompt (or one for all) number of top log-probabilities, 0..50.
      stop: per prompt stop strings (None, one str, or a list of non-empty str).
      seed: PRNG seed in ``[0, 2**63 - 1]`` for all prompts, or one per prompt in
        ``[0, 2**31)``; each prompt's tokens depend on its own seed (and index, for a shared
        seed) alone, not on its batch or row, and are the same with either loop.
      batch_size: rows per batch, ``1..max_batch_size`` (default: the engine's max batch size).
      loop: ``"python"`` (streaming, early stop on stop strings) or ``"while"`` (one jit).
      on_text: ``on_text(prompt_index, text_delta)``: streamed as tokens arrive with the python
        loop (never any part of a stop string: text that may begin one is held back until it
        cannot); with the while loop, called once per prompt with the whole text.
      sampling: the fixed sampling limits (static: one compilation serves every request within
        them); top_k, top_p, temperature, bias and num_logprobs are per-row values.
      lora: the engine's LoRA adapters (``runtime.lora.load_lora_bank``).
      lora_names: per prompt the adapter name, None for the base model (rows of one batch may
        use different adapters).
      defaults: the values unset arguments take; default: the tokenizer's checkpoint's
        ``generation_config.json`` (``gen_defaults.defaults_for``).
      chat_template_kwargs: for chat-message prompts, ``Tokenizer.apply_chat_template``'s
        options (``tools`` as schemas or functions, ``continue_final_message``,
        ``add_generation_prompt``, ``template_name``, template variables).

    Raises:
      InputError: an empty, too long or out-of-vocabulary prompt, a per-prompt list whose length
        is not ``len(prompts)``, bad sampling values, stop strings, seed, batch size or loop, an
        unknown ``lora_name``.
    """
    args = {k: v for k, v in locals().items() if k not in ("engine", "tokenizer", "on_text")}
    events = _run(engine, tokenizer, _plan(engine, tokenizer, **args))
    return loops.drive(events, None if on_text is None else (lambda event: on_text(*event)))


def _plan(
    engine,
    tokenizer,
    prompts,
    *,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    min_p,
    repetition_penalty,
    presence_penalty,
    frequency_penalty,
    logit_bias,
    num_logprobs,
    stop,
    seed,
    batch_size,
    loop,
    sampling,
    lora,
    lora_names,
    defaults,
    chat_template_kwargs,
) -> list[dict]:
    """Checks every argument of ``generate`` for every prompt; returns the batches' arguments."""
    if is_text(prompts):  # strings or chat messages: encoded as `edgellm-fn generate` does
        prompts = encode_prompts(tokenizer, prompts, chat_template_kwargs)
    n = _check_prompts(engine, prompts)
    cfg = engine.config
    where = "generate"
    d = defaults_for(tokenizer) if defaults is None else defaults
    max_new_tokens = d.resolve("max_new_tokens", max_new_tokens)
    if temperature is None and top_p is None and top_k is None:  # the checkpoint decides
        temperature, top_p, top_k = d.temperature, d.top_p, d.top_k
    min_p = d.resolve("min_p", min_p)
    repetition_penalty = d.resolve("repetition_penalty", repetition_penalty)
    if loop not in ("python", "while"):
        raise InputError(f"{where}: loop={show(loop)} (expected 'python' or 'while')")
    if batch_size is None:
        batch_size = cfg.max_batch_size
    if not _is_int(batch_size) or not 1 <= batch_size <= cfg.max_batch_size:
        raise InputError(
            f"{where}: batch_size={show(batch_size)} (expected 1..max_batch_size="
            f"{cfg.max_batch_size}, or None for the largest)"
        )
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise InputError(f"{where}: max_new_tokens={show(max_new_tokens)} (expected an int >= 1)")
    seeds = prompt_seeds(seed, n)
    logit_bias = _per_prompt("logit_bias", logit_bias, n, None, scalar=False)
    nlp = _per_prompt("num_logprobs", num_logprobs, n, 0)
    stop = [
        check_stops(s, f"{where}: stop[{i}]")
        for i, s in enumerate(_per_prompt("stop", stop, n, None, scalar=False))
    ]
    temperature, top_p, top_k = sampling_values(temperature, top_p, top_k)
    values = dict(
        temperature=_per_prompt("temperature", temperature, n, 0.0),
        top_p=_per_prompt("top_p", top_p, n, 0.0),
        top_k=_per_prompt("top_k", top_k, n, 0),
        min_p=_per_prompt("min_p", min_p, n, 0.0),
        repetition_penalty=_per_prompt("repetition_penalty", repetition_penalty, n, 1.0),
        presence_penalty=_per_prompt("presence_penalty", presence_penalty, n, 0.0),
        frequency_penalty=_per_prompt("frequency_penalty", frequency_penalty, n, 0.0),
    )
    check_sampling_values(  # every prompt at once, on the host: row i is prompt i
        where,
        n,
        vocab_size=cfg.model.vocab_size,
        logit_bias=logit_bias,
        num_logprobs=nlp,
        config=sampling,
        seed=seeds,
        **values,
    )
    lora_names = _per_prompt("lora_names", lora_names, n, None, scalar=False)
    if lora is None and any(lora_names):
        raise InputError(
            f"generate: lora_name={next(x for x in lora_names if x)!r} (expected null: no LoRA "
            "adapters are loaded); pass lora=load_lora_bank(...) or --lora NAME=DIR"
        )
    if lora is not None:
        lora.indices(lora_names, n, "generate")  # unknown names fail before any batch runs
    eos = eos_ids_of(engine, tokenizer)
    key = jax.random.PRNGKey(0)  # unused: every row has its own seed
    batches = []
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        batches.append(
            dict(
                start=start,
                prompts=[[int(t) for t in prompts[i]] for i in rows],
                max_new_tokens=max_new_tokens,
                **{k: [v[i] for i in rows] for k, v in values.items() if k in _SAMPLING},
                penalties={
                    **{k: [v[i] for i in rows] for k, v in values.items() if k not in _SAMPLING},
                    "seed": [seeds[i] for i in rows],
                },
                logit_bias=[logit_bias[i] for i in rows],
                num_logprobs=[nlp[i] for i in rows],
                stop=[stop[i] for i in rows],
                eos=eos,
                key=jax.random.fold_in(key, start),
                loop=loop,
                sampling=sampling,
                lora_bank=lora,
                lora_names=[lora_names[i] for i in rows],
            )
        )
    return batches


#: ``(prompt index, text delta)`` events, then the completions (``StopIteration.value``).
Events = Generator[tuple[int, str], None, list[Completion]]


def _run(engine, tokenizer, batches: list[dict]) -> Events:
    """Runs planned batches one after another, yielding their text as it is decoded."""
    out: list[Completion] = []
    for b in batches:
        b = dict(b)
        bank, names = b.pop("lora_bank"), b.pop("lora_names")
        b["lora"] = None if bank is None else bank.state(names)
        out.extend((yield from _iter_batch(engine, tokenizer, **b)))
    return out


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_prompts(engine: Engine, prompts) -> int:
    cfg = engine.config
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence | np.ndarray):
        raise InputError(
            f"generate: prompts={show(prompts)} (expected a list of prompts: token ids, strings "
            "or chat messages); wrap a single prompt in a list"
        )
    for i, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not isinstance(p, Sequence | np.ndarray):
            raise InputError(f"generate: prompts[{i}]={show(p)} (expected a list of token ids)")
        if not 1 <= len(p) <= cfg.max_input_len:
            raise InputError(
                f"generate: prompt {i} has {len(p)} tokens (expected 1..max_input_len="
                f"{cfg.max_input_len}); upstream rejects longer prompts too"
            )
        steps.check_token_ids(p, cfg.model.vocab_size, f"generate: prompts[{i}]")
    return len(prompts)


def _per_prompt(name: str, value, n: int, default, *, scalar: bool = True) -> list:
    """One value per prompt: ``value`` repeated (a scalar, when ``scalar``), None -> ``default``
    for all, or a sequence of exactly ``n``."""
    if value is None:
        return [default] * n
    if scalar and not isinstance(value, Sequence | np.ndarray):
        return [value] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence | np.ndarray):
        raise InputError(
            f"generate: {name}={show(value)} (expected None or a list with one entry per prompt)"
        )
    if len(value) != n:
        raise InputError(
            f"generate: len({name})={len(value)} (expected one entry per prompt, len(prompts)="
            f"{n}); pass {'one value for all or ' if scalar else ''}a list of len(prompts)"
        )
    return list(value)


class _RowText:
    """One row's streamed text: detokenized (EOS skipped), with its stop strings applied."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str], eos: tuple[int, ...]):
        self.decoder = StreamDecoder(tokenizer)
        self.stops = StopStream(stop)
        self.eos = eos

    def push(self, tok: int) -> str:
        """Adds a token; returns the newly visible text (never part of a stop string)."""
        if tok in self.eos:
            return ""
        return self.stops.push(self.decoder.push(tok))

    @property
    def stopped(self) -> bool:
        return self.stops.hit is not None


def stop_token_count(
    tokenizer: Tokenizer, tokens: Sequence[int], stop: list[str], eos: tuple[int, ...]
) -> int | None:
    """How many of ``tokens`` the python loop keeps: up to the token that completes a stop
    string (None when none does), replaying the same streamed detokenization."""
    row = _RowText(tokenizer, stop, eos)
    for i, tok in enumerate(tokens):
        row.push(int(tok))
        if row.stopped:
            return i + 1
    return None


def _iter_batch(
    engine,
    tokenizer,
    prompts,
    *,
    max_new_tokens,
    temperature,
    top_p,
    top_k,
    penalties,
    logit_bias,
    num_logprobs,
    stop,
    eos,
    key,
    loop,
    sampling,
    start=0,
    lora=None,
) -> Events:
    """One batch, its first prompt being prompt ``start``: ``(prompt index, text delta)``
    events as tokens are decoded, then its completions."""
    b = len(prompts)
    cfg = engine.config
    config, params = make_sampling_params(
        b,
        vocab_size=cfg.output_vocab_size,  # bias ids are logit columns (runtime/vocab.py)
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        logit_bias=reduce_logit_bias(engine.vocab_map, logit_bias, b),
        num_logprobs=num_logprobs,
        config=sampling,
        prompts=prompts,
        vocab_map=engine.vocab_map,
        **penalties,
    )
    longest = max(len(p) for p in prompts)
    ids, lengths = pad_prompts(prompts, bucket_length(longest, cfg.max_input_len))
    state = create_state(cfg, b, config, lora=lora)
    state = steps.prefill(engine, state, steps.embed(engine, ids), lengths)
    limits = loops.token_limits(engine, lengths, max_new_tokens)

    rows = [_RowText(tokenizer, stop[r], eos) for r in range(b)]
    streamed = [""] * b

    if loop == "while":
        _, res = loops.decode_while(
            engine, state, config, params, key, limits, eos_ids=eos, max_new_tokens=max_new_tokens
        )
        res = jax.device_get(res)
    else:
        pending: list[tuple[int, str]] = []

        def stream(row: int, tok: int) -> None:
            delta = rows[row].push(tok)
            if delta:
                pending.append((start + row, delta))
                streamed[row] += delta

        decoding = loops.iter_decode_python(
            engine,
            state,
            config,
            params,
            key,
            limits,
            eos_ids=eos,
            max_new_tokens=max_new_tokens,
            on_token=stream,
            should_stop=lambda row, tok: rows[row].stopped,
        )
        while True:
            try:
                next(decoding)
            except StopIteration as done:
                _, res = done.value
                break
            yield from pending
            pending.clear()
    out = []
    for r in range(b):
        toks = [int(t) for t in res.tokens[r, : int(res.num_tokens[r])]]
        if loop == "while" and stop[r]:  # trim to the token that completed the stop string
            keep = stop_token_count(tokenizer, toks, stop[r], eos)
            toks = toks if keep is None else toks[:keep]
        text = tokenizer.decode([t for t in toks if t not in eos])
        hit = find_stop(text, stop[r]) if stop[r] else None
        if hit is not None:
            text = text[: hit[0]]
        if text.startswith(streamed[r]) and len(text) > len(streamed[r]):
            # the held-back tail, or the while loop's whole text
            yield start + r, text[len(streamed[r]) :]
        reason = "stop" if hit is not None or (toks and toks[-1] in eos) else "length"
        out.append(
            Completion(
                text=text,
                tokens=toks,
                finish_reason=reason,
                prompt_tokens=int(lengths[r]),
                token_limit=int(limits[r]),
                logprobs=_logprobs(tokenizer, res, r, len(toks), num_logprobs[r])
                if num_logprobs[r]
                else None,
            )
        )
    return out


_SAMPLING = ("temperature", "top_p", "top_k")


def prompt_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Per-prompt seeds: the given list, or from one int ``seed`` one per prompt index (a
    prompt's tokens never depend on its batch or row)."""
    if _is_int(seed):
        if not 0 <= seed <= MAX_SEED:
            raise InputError(f"generate: seed={show(seed)} (expected an int in [0, 2**63 - 1])")
        mixed = np.random.default_rng([int(seed), 0x5EED]).integers(0, 2**31, size=n)
        return [int(s) for s in mixed]
    if isinstance(seed, (str, bytes, bool)) or not isinstance(seed, Sequence | np.ndarray):
        raise InputError(f"generate: seed={show(seed)} (expected an int or one int per prompt)")
    seeds = list(seed)
    if len(seeds) != n:
        raise InputError(
            f"generate: len(seed)={len(seeds)} (expected one int, or one per prompt: {n})"
        )
    return seeds


def _logprobs(tokenizer, res, row: int, n: int, k: int) -> list[dict]:
    entries = []
    for t in range(n):
        tid = int(res.tokens[row, t])
        entries.append(
            {
                "token_id": tid,
                "token": tokenizer.decode([tid]),
                "logprob": float(res.logprobs[row, t]),
                "top_logprobs": [
                    {"token_id": int(i), "token": tokenizer.decode([int(i)]), "logprob": float(lp)}
                    for i, lp in zip(
                        res.top_ids[row, t, :k], res.top_logprobs[row, t, :k], strict=True
                    )
                ],
            }
        )
    return entries


@dataclasses.dataclass(frozen=True)
class TextDelta:
    """One piece of streamed text; the last one has no text and carries the ``finish_reason``
    and the whole ``Completion``."""

    text: str
    finish_reason: str | None = None
    completion: Completion | None = None


def stream(engine: Engine, tokenizer: Tokenizer, prompt, **kwargs) -> Iterator[TextDelta]:
    """Generates for one prompt (ids, a string or chat messages) and yields its text as it is
    decoded (never any part of a stop string), then ``TextDelta("", finish_reason,
    completion)``.

    Runs in the calling thread: each ``next`` advances the python decode loop. ``kwargs`` are
    ``generate``'s; every one is checked here, before the iterator is returned (``InputError``
    as ``generate``). Abandoning the iterator stops the generation.
    """
    for name in ("loop", "on_text"):
        if name in kwargs:
            raise InputError(f"stream: {name}= is set by stream itself (got {show(kwargs[name])})")
    unknown = sorted(set(kwargs) - set(_GENERATE_OPTIONS))
    if unknown:
        raise InputError(
            f"stream: unknown argument {unknown[0]!r} (expected generate's: "
            f"{', '.join(sorted(_GENERATE_OPTIONS))})"
        )
    args = {**_GENERATE_OPTIONS, **kwargs, "loop": "python"}
    return _deltas(_run(engine, tokenizer, _plan(engine, tokenizer, [prompt], **args)))


def _deltas(events: Events) -> Iterator[TextDelta]:
    while True:
        try:
            _, text = next(events)
        except StopIteration as done:
            (completion,) = done.value
            yield TextDelta("", completion.finish_reason, completion)
            return
        yield TextDelta(text)


#: ``generate``'s keyword options and their defaults (``stream`` takes the same).
_GENERATE_OPTIONS = {
    name: p.default
    for name, p in inspect.signature(generate).parameters.items()
    if p.kind is p.KEYWORD_ONLY and name != "on_text"
}
