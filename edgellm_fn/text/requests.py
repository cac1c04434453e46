"""Edge-LLM's request/response JSON (``llm_inference --inputFile/--outputFile``), strictly parsed.

Input::

    {"batch_size": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 1,
     "max_generate_length": 64, "apply_chat_template": true,
     "requests": [{"messages": [{"role": "user", "content": "..."}],
                   "stop": ["\\n\\n"], "logit_bias": {"42": -100}, "num_logprobs": 2}]}

Output: ``{"responses": [{"output_text", "finish_reason", "logprobs"}]}``. Defaults come from
``defaults.DEFAULTS``: greedy when none of ``temperature``/``top_p``/``top_k`` is given, else
sampling with the others at 1, 1 and 0 (off); ``top_k: 1`` or ``temperature: 0`` is greedy. With
``apply_chat_template: false`` the prompt is the messages' contents joined with newlines.

The output is strict JSON (no ``NaN``/``Infinity``): a log-probability of ``-inf`` (a token the
sampler could not pick) is written as ``MIN_LOGPROB`` (-9999.0, OpenAI's convention), a NaN one
as ``null``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..config import LIMITS, get_field, read_json_file
from ..config.defaults import DEFAULTS, sampling_values
from ..errors import InputError, show
from ..runtime.generate import Completion
from ..runtime.sampling import MAX_NUM_LOGPROBS

#: Longest ``max_generate_length`` accepted: no engine holds a longer KV cache.
MAX_GENERATE_LENGTH = LIMITS["max_kv_cache_capacity"]
#: Largest token id (``logit_bias`` keys) and ``top_k``: no supported vocab is larger.
MAX_TOKEN_ID = LIMITS["vocab_size"] - 1
#: What a ``-inf`` log-probability is written as (strict JSON has no infinity).
MIN_LOGPROB = -9999.0

_TOP = {
    "batch_size",
    "temperature",
    "top_p",
    "top_k",
    "max_generate_length",
    "apply_chat_template",
    "available_lora_weights",
    "requests",
}
_REQ = {
    "messages",
    "lora_name",
    "stop",
    "logit_bias",
    "num_logprobs",
    "save_system_prompt_kv_cache",
    "disable_spec_decode",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Request:
    """One parsed request.

    Attributes:
      messages: ``[{"role", "content"}]`` with text content.
      stop: stop strings.
      logit_bias: ``{token_id: bias}``.
      num_logprobs: top log-probabilities per token (0..50).
      lora_name: the LoRA adapter of this request (a key of ``available_lora_weights`` or a
        ``--lora`` name), None for the base model.
    """

    messages: list[dict[str, str]]
    stop: list[str]
    logit_bias: dict[int, float]
    num_logprobs: int
    lora_name: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestBatch:
    """A parsed input file: batch-wide sampling settings, the LoRA adapters by name
    (``available_lora_weights``: name -> adapter directory) and the requests.

    ``temperature``, ``top_p`` and ``top_k`` are None when the file leaves them out;
    ``sampling()`` resolves them as ``generate`` does (greedy unless one asks to sample).
    """

    batch_size: int | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    max_generate_length: int
    apply_chat_template: bool
    requests: list[Request]
    available_lora_weights: dict[str, str] = dataclasses.field(default_factory=dict)

    def sampling(self) -> tuple[float, float, int]:
        """``(temperature, top_p, top_k)`` after ``defaults.sampling_values``."""
        return sampling_values(self.temperature, self.top_p, self.top_k)


def load_requests(
    path: str | Path, *, generate_length_limit: int = MAX_GENERATE_LENGTH
) -> RequestBatch:
    """Reads and validates a request file; errors name the file and the field.

    Raises:
      InputError: the file is missing, not UTF-8 JSON, or a field is invalid.
    """
    raw = read_json_file(path, InputError, "a request JSON file")
    return parse_requests(raw, str(path), generate_length_limit=generate_length_limit)


def _field(obj: dict, key: str, kinds: tuple[type, ...], where: str, default: Any) -> Any:
    """An optional request field of one of ``kinds`` (``get_field`` raising ``InputError``)."""
    return get_field(obj, key, kinds, where, error=InputError, default=default)


def _number(obj: dict, key: str, where: str, default: float | None) -> float | None:
    """A finite number (JSON has no NaN/Infinity; Python's parser accepts them anyway)."""
    value = _field(obj, key, (int, float), where, default)
    if value is None:
        return None
    number = _finite(value)
    if number is None:
        raise InputError(f"{where}: {key}={show(value)} (expected a finite number)")
    return number


def _finite(value: int | float) -> float | None:
    """``float(value)`` when finite; None for NaN, infinity and ints beyond float range."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _unknown(obj: dict, known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            raise InputError(
                f"{where}: unknown field {show(key)} (expected one of {sorted(known)})"
            )


def _utf8(text: str, where: str) -> str:
    """Refuses strings that cannot be encoded (lone surrogates such as ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{where}={show(text[max(0, e.start - 10) : e.end + 10])} has a lone surrogate "
            f"{text[e.start]!r} at index {e.start} (expected valid Unicode text); encode "
            "characters outside the BMP as a surrogate pair or as UTF-8"
        ) from None
    return text


def parse_requests(
    raw: Any, where: str = "request", *, generate_length_limit: int = MAX_GENERATE_LENGTH
) -> RequestBatch:
    """Validates a decoded request JSON object.

    Args:
      raw: the decoded JSON.
      where: names the source in error messages.
      generate_length_limit: largest ``max_generate_length`` accepted (pass the engine's KV
        capacity to refuse requests it would clamp).

    Raises:
      InputError: a field is missing, of the wrong type or out of range (named in the message).
    """
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    _unknown(raw, _TOP, where)
    batch_size = _field(raw, "batch_size", (int,), where, None)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"{where}: batch_size={batch_size} (expected >= 1)")
    if batch_size is not None and batch_size > LIMITS["max_batch_size"]:
        raise InputError(
            f"{where}: batch_size={show(batch_size)} (expected <= {LIMITS['max_batch_size']})"
        )
    temperature = _number(raw, "temperature", where, None)
    if temperature is not None and temperature < 0:
        raise InputError(f"{where}: temperature={temperature} (expected >= 0)")
    top_p = _number(raw, "top_p", where, None)
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"{where}: top_p={top_p} (expected 0 < top_p <= 1)")
    top_k = _field(raw, "top_k", (int,), where, None)
    if top_k is not None and top_k < 0:
        raise InputError(f"{where}: top_k={top_k} (expected >= 0; 1 is greedy, 0 is off)")
    if top_k is not None and top_k > MAX_TOKEN_ID + 1:
        raise InputError(
            f"{where}: top_k={show(top_k)} (expected <= {MAX_TOKEN_ID + 1}); no vocab is that "
            "large, use 0 to turn top-k off"
        )
    max_len = _field(raw, "max_generate_length", (int,), where, DEFAULTS["max_new_tokens"])
    if max_len < 1:
        raise InputError(f"{where}: max_generate_length={max_len} (expected >= 1)")
    if max_len > generate_length_limit:
        raise InputError(
            f"{where}: max_generate_length={show(max_len)} (expected <= "
            f"{generate_length_limit}); no KV cache holds that many tokens, lower it"
        )
    chat = _field(raw, "apply_chat_template", (bool,), where, True)
    loras = _field(raw, "available_lora_weights", (dict,), where, {})
    for name, path in loras.items():
        if not name or not isinstance(path, str) or not path:
            raise InputError(
                f"{where}: available_lora_weights[{show(name)}]={show(path)} (expected a "
                "non-empty name mapped to a PEFT adapter directory path)"
            )
    reqs = raw.get("requests")
    if not isinstance(reqs, list) or not reqs:
        raise InputError(f"{where}: requests={reqs!r} (expected a non-empty list)")
    return RequestBatch(
        batch_size=batch_size,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_generate_length=max_len,
        apply_chat_template=chat,
        requests=[_parse_request(r, f"{where}: requests[{i}]") for i, r in enumerate(reqs)],
        available_lora_weights=dict(loras),
    )


def _parse_request(raw: Any, where: str) -> Request:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    _unknown(raw, _REQ, where)
    lora_name = _field(raw, "lora_name", (str,), where, None) or None
    if _field(raw, "save_system_prompt_kv_cache", (bool,), where, False):
        raise InputError(
            f"{where}: save_system_prompt_kv_cache=true (expected false); use the prefix cache API"
        )
    _field(raw, "disable_spec_decode", (bool,), where, False)  # no spec decode: always honoured
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: messages={show(messages)} (expected a non-empty list)")
    parsed = []
    for j, m in enumerate(messages):
        mw = f"{where}.messages[{j}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"{mw}: expected {{'role': str, 'content': str}}, got {show(m)}")
        role = _utf8(m["role"], f"{mw}: role")
        parsed.append({"role": role, "content": _text(m.get("content"), mw)})
    stop = _field(raw, "stop", (str, list), where, [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise InputError(f"{where}: stop={show(stop)} (expected non-empty strings)")
    for i, s in enumerate(stop):
        _utf8(s, f"{where}: stop[{i}]")
    bias_raw = _field(raw, "logit_bias", (dict,), where, {})
    bias = {}
    for key, value in bias_raw.items():
        tid = _token_key(key)
        if tid is None:
            raise InputError(
                f"{where}: logit_bias key {show(key)} (expected a token id 0..{MAX_TOKEN_ID})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: logit_bias[{key}]={show(value)} (expected a number)")
        number = _finite(value)
        if number is None:
            raise InputError(
                f"{where}: logit_bias[{key}]={show(value)} (expected a finite number); use -100 "
                "to ban a token"
            )
        bias[tid] = number
    nlp = _field(raw, "num_logprobs", (int,), where, 0)
    if not 0 <= nlp <= MAX_NUM_LOGPROBS:
        raise InputError(f"{where}: num_logprobs={nlp} (expected 0..{MAX_NUM_LOGPROBS})")
    return Request(
        messages=parsed, stop=stop, logit_bias=bias, num_logprobs=nlp, lora_name=lora_name
    )


def _token_key(key: Any) -> int | None:
    """A ``logit_bias`` key: an ASCII decimal token id (``"42"``) in range, else None."""
    if isinstance(key, int) and not isinstance(key, bool):
        tid = key
    elif isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10:
        tid = int(key)
    else:
        return None
    return tid if 0 <= tid <= MAX_TOKEN_ID else None


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return _utf8(content, f"{where}: content")
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise InputError(
                    f"{where}: content part {show(part)} (expected {{'type': 'text'}})"
                )
            parts.append(_utf8(part["text"], f"{where}: content[{k}].text"))
        return "".join(parts)
    raise InputError(f"{where}: content={show(content)} (expected a string or text parts)")


def _json_safe(value: Any) -> Any:
    """Replaces non-finite floats: ``-inf`` by ``MIN_LOGPROB``, NaN and ``+inf`` by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return MIN_LOGPROB if value == -math.inf else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def responses_json(completions: list[Completion]) -> dict:
    """The output file's object; every number is finite (see the module docstring)."""
    return {
        "responses": [
            {
                "output_text": c.text,
                "finish_reason": c.finish_reason,
                "logprobs": _json_safe(c.logprobs),
            }
            for c in completions
        ]
    }


def responses_text(completions: list[Completion]) -> str:
    """The output file's text: strict JSON (``allow_nan=False``), UTF-8 characters kept."""
    return json.dumps(responses_json(completions), indent=2, ensure_ascii=False, allow_nan=False)
