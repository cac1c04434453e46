"""Host-side generation: tokenize, batch, prefill, decode loop, detokenize, stop strings.

This is the facade the CLI and the demo use; research code can call ``steps`` and ``loops``
directly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np

from ..engine.protocol import Engine
from ..errors import InputError
from ..state.resources import create_state
from ..text.stops import find_stop
from ..text.tokenizer import StreamDecoder, Tokenizer
from . import loops, steps
from .gen_defaults import GenerationDefaults, defaults_for
from .lora import LoraBank
from .prompts import bucket_length as bucket_length
from .prompts import pad_prompts
from .sampling import REQUEST_LIMITS, SamplingConfig, make_sampling_params
from .vocab import reduce_logit_bias


@dataclasses.dataclass(frozen=True, kw_only=True)
class Completion:
    """One request's result.

    Attributes:
      text: generated text (stop string and EOS excluded).
      tokens: generated ids (EOS included when it ended the row).
      finish_reason: ``"stop"`` (EOS or stop string) or ``"length"``.
      logprobs: per token ``{"token_id", "token", "logprob", "top_logprobs"}``, or None.
      prompt_tokens: number of prompt tokens.
    """

    text: str
    tokens: list[int]
    finish_reason: str
    logprobs: list[dict] | None
    prompt_tokens: int


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
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    logit_bias: Sequence[dict | None] | None = None,
    num_logprobs: Sequence[int] | int = 0,
    stop: Sequence[Sequence[str]] | None = None,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    loop: str = "python",
    on_text: Callable[[int, str], None] | None = None,
    sampling: SamplingConfig = REQUEST_LIMITS,
    lora: LoraBank | None = None,
    lora_names: Sequence[str | None] | None = None,
    defaults: GenerationDefaults | None = None,
) -> list[Completion]:
    """Generates a completion for each tokenized prompt.

    Args:
      engine: any provider.
      tokenizer: for detokenization, stop strings and EOS ids.
      prompts: token ids of each prompt (chat template already applied).
      max_new_tokens: generation limit, clamped per row to the KV capacity.
      temperature, top_p, top_k, min_p: sampling (``top_k == 1`` or ``temperature == 0``:
        greedy).
      repetition_penalty: ``transformers``' (prompt and output ids); 1 = off.
      presence_penalty, frequency_penalty: OpenAI's (output ids), in [-2, 2].
      (max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty: None = the
      checkpoint's ``generation_config.json`` default, see ``runtime/gen_defaults.py``.)
      logit_bias: per prompt ``{token_id: bias}`` or None.
      num_logprobs: per prompt (or one for all) number of top log-probabilities, 0..50.
      stop: per prompt stop strings.
      seed: PRNG seed, one for all prompts or one per prompt; each prompt's tokens depend on its
        own seed (and index, for a shared seed) alone, not on its batch or row, and are the
        same with either loop.
      batch_size: rows per batch (default and maximum: the engine's max batch size).
      loop: ``"python"`` (streaming, early stop on stop strings) or ``"while"`` (one jit).
      on_text: ``on_text(prompt_index, text_delta)`` while streaming (python loop only).
      sampling: the fixed sampling limits (static: one compilation serves every request within
        them); top_k, top_p, temperature, bias and num_logprobs are per-row values.
      lora: the engine's LoRA adapters (``runtime.lora.load_lora_bank``).
      lora_names: per prompt the adapter name, None for the base model (rows of one batch may
        use different adapters).
      defaults: the values unset arguments take; default: the tokenizer's checkpoint's
        ``generation_config.json`` (``gen_defaults.defaults_for``).

    Raises:
      InputError: empty or too long prompts, bad sampling values, unknown loop, an unknown
        ``lora_name``.
    """
    n = len(prompts)
    cfg = engine.config
    d = defaults_for(tokenizer) if defaults is None else defaults
    max_new_tokens = d.resolve("max_new_tokens", max_new_tokens)
    temperature, top_p = d.resolve("temperature", temperature), d.resolve("top_p", top_p)
    top_k, min_p = d.resolve("top_k", top_k), d.resolve("min_p", min_p)
    repetition_penalty = d.resolve("repetition_penalty", repetition_penalty)
    seeds = prompt_seeds(seed, n)
    if loop not in ("python", "while"):
        raise InputError(f"generate: loop={loop!r} (expected 'python' or 'while')")
    batch_size = batch_size or cfg.max_batch_size
    if not 1 <= batch_size <= cfg.max_batch_size:
        raise InputError(
            f"generate: batch_size={batch_size} (expected 1..max_batch_size={cfg.max_batch_size})"
        )
    for i, p in enumerate(prompts):
        if not 1 <= len(p) <= cfg.max_input_len:
            raise InputError(
                f"generate: prompt {i} has {len(p)} tokens (expected 1..max_input_len="
                f"{cfg.max_input_len}); upstream rejects longer prompts too"
            )
    lora_names = [None] * n if lora_names is None else list(lora_names)
    if lora is None and any(lora_names):
        raise InputError(
            f"generate: lora_name={next(x for x in lora_names if x)!r} (expected null: no LoRA "
            "adapters are loaded); pass lora=load_lora_bank(...) or --lora NAME=DIR"
        )
    if lora is not None:
        lora.indices(lora_names, n, "generate")  # unknown names fail before any batch runs
    logit_bias = list(logit_bias) if logit_bias is not None else [None] * n
    nlp = [num_logprobs] * n if isinstance(num_logprobs, int) else list(num_logprobs)
    stop = [list(s or []) for s in stop] if stop is not None else [[] for _ in range(n)]
    eos = eos_ids_of(engine, tokenizer)
    key = jax.random.PRNGKey(0)  # unused: every row has its own seed
    out: list[Completion] = []
    for start in range(0, n, batch_size):
        rows = range(start, min(n, start + batch_size))
        out.extend(
            _generate_batch(
                engine,
                tokenizer,
                [list(prompts[i]) for i in rows],
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=top_k,
                penalties=dict(
                    min_p=min_p,
                    repetition_penalty=repetition_penalty,
                    presence_penalty=presence_penalty,
                    frequency_penalty=frequency_penalty,
                    seed=[seeds[i] for i in rows],
                ),
                logit_bias=[logit_bias[i] for i in rows],
                num_logprobs=[nlp[i] for i in rows],
                stop=[stop[i] for i in rows],
                eos=eos,
                key=jax.random.fold_in(key, start),
                loop=loop,
                on_text=None if on_text is None else (lambda r, s, o=start: on_text(o + r, s)),
                sampling=sampling,
                lora=None if lora is None else lora.state([lora_names[i] for i in rows]),
            )
        )
    return out


def _generate_batch(
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
    on_text,
    sampling,
    lora=None,
) -> list[Completion]:
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

    decoders = [StreamDecoder(tokenizer) for _ in range(b)]
    texts = [""] * b
    stopped = [False] * b

    def on_token(row: int, tok: int) -> None:
        if tok in eos:
            return
        texts[row] += decoders[row].push(tok)

    def should_stop(row: int, tok: int) -> bool:
        hit = find_stop(texts[row], stop[row]) if stop[row] else None
        stopped[row] = hit is not None
        return stopped[row]

    if loop == "while":
        _, res = loops.decode_while(
            engine, state, config, params, key, limits, eos_ids=eos, max_new_tokens=max_new_tokens
        )
        res = jax.device_get(res)
    else:
        streamed = [""] * b

        def stream(row: int, tok: int) -> None:
            on_token(row, tok)
            if on_text is not None and not stopped[row]:
                visible = _visible(texts[row], stop[row])
                if len(visible) > len(streamed[row]):
                    on_text(row, visible[len(streamed[row]) :])
                    streamed[row] = visible

        _, res = loops.decode_python(
            engine,
            state,
            config,
            params,
            key,
            limits,
            eos_ids=eos,
            max_new_tokens=max_new_tokens,
            on_token=stream,
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
                prompt_tokens=int(lengths[r]),
                logprobs=_logprobs(tokenizer, res, r, len(toks), num_logprobs[r])
                if num_logprobs[r]
                else None,
            )
        )
    return out


def prompt_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """Per-prompt seeds: the given list, or from one int ``seed`` one per prompt index (a
    prompt's tokens never depend on its batch or row)."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if not 0 <= seed < 2**31:
            raise InputError(f"generate: seed={seed} (expected an int in [0, 2**31))")
        mixed = np.random.default_rng([int(seed), 0x5EED]).integers(0, 2**31, size=n)
        return [int(s) for s in mixed]
    seeds = list(seed)
    if len(seeds) != n:
        raise InputError(
            f"generate: len(seed)={len(seeds)} (expected one int, or one per prompt: {n})"
        )
    return seeds


def _visible(text: str, stop: list[str]) -> str:
    """Text safe to stream: hold back a suffix that could still become a stop string."""
    from ..text.stops import partial_stop_length

    return text[: len(text) - partial_stop_length(text, stop)] if stop else text


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
