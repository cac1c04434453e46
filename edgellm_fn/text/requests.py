"""Edge-LLM's request/response JSON (``llm_inference --inputFile/--outputFile``), strictly parsed.

Input::

    {"batch_size": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 1,
     "max_generate_length": 64, "apply_chat_template": true,
     "requests": [{"messages": [{"role": "user", "content": "..."}],
                   "stop": ["\\n\\n"], "logit_bias": {"42": -100}, "num_logprobs": 2}]}

Output: ``{"responses": [{"output_text", "finish_reason", "logprobs"}]}``. ``top_k: 1`` (the
default) is greedy. With ``apply_chat_template: false`` the prompt is the messages' contents
joined with newlines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import get_field, read_json
from ..errors import InputError
from ..runtime.generate import Completion
from ..runtime.sampling import MAX_NUM_LOGPROBS

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
    """

    messages: list[dict[str, str]]
    stop: list[str]
    logit_bias: dict[int, float]
    num_logprobs: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestBatch:
    """A parsed input file: batch-wide sampling settings and the requests."""

    batch_size: int | None
    temperature: float
    top_p: float
    top_k: int
    max_generate_length: int
    apply_chat_template: bool
    requests: list[Request]


def load_requests(path: str | Path) -> RequestBatch:
    """Reads and validates a request file; errors name the file and the field."""
    raw = read_json(path, missing="expected an Edge-LLM request file", error=InputError)
    return parse_requests(raw, str(path))


def _field(obj: dict, key: str, kinds: tuple[type, ...], where: str, default: Any) -> Any:
    """An optional request field of one of ``kinds`` (``get_field`` raising ``InputError``)."""
    return get_field(obj, key, kinds, where, error=InputError, default=default)


def _unknown(obj: dict, known: set[str], where: str) -> None:
    for key in obj:
        if key not in known:
            raise InputError(f"{where}: unknown field {key!r} (expected one of {sorted(known)})")


def parse_requests(raw: Any, where: str = "request") -> RequestBatch:
    """Validates a decoded request JSON object."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    _unknown(raw, _TOP, where)
    batch_size = _field(raw, "batch_size", (int,), where, None)
    if batch_size is not None and batch_size < 1:
        raise InputError(f"{where}: batch_size={batch_size} (expected >= 1)")
    temperature = float(_field(raw, "temperature", (int, float), where, 1.0))
    if temperature < 0:
        raise InputError(f"{where}: temperature={temperature} (expected >= 0)")
    top_p = float(_field(raw, "top_p", (int, float), where, 1.0))
    if not 0 < top_p <= 1:
        raise InputError(f"{where}: top_p={top_p} (expected 0 < top_p <= 1)")
    top_k = _field(raw, "top_k", (int,), where, 1)
    if top_k < 0:
        raise InputError(f"{where}: top_k={top_k} (expected >= 0; 1 is greedy, 0 is off)")
    max_len = _field(raw, "max_generate_length", (int,), where, 128)
    if max_len < 1:
        raise InputError(f"{where}: max_generate_length={max_len} (expected >= 1)")
    chat = _field(raw, "apply_chat_template", (bool,), where, True)
    if _field(raw, "available_lora_weights", (dict,), where, {}):
        raise InputError(
            f"{where}: available_lora_weights is not empty (expected {{}}); this runtime has no "
            "LoRA support yet"
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
    )


def _parse_request(raw: Any, where: str) -> Request:
    if not isinstance(raw, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    _unknown(raw, _REQ, where)
    if _field(raw, "lora_name", (str,), where, None):
        raise InputError(
            f"{where}: lora_name={raw['lora_name']!r} (expected null); no LoRA support"
        )
    if _field(raw, "save_system_prompt_kv_cache", (bool,), where, False):
        raise InputError(
            f"{where}: save_system_prompt_kv_cache=true (expected false); use the prefix cache API"
        )
    _field(raw, "disable_spec_decode", (bool,), where, False)  # no spec decode: always honoured
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError(f"{where}: messages={messages!r} (expected a non-empty list)")
    parsed = []
    for j, m in enumerate(messages):
        mw = f"{where}.messages[{j}]"
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InputError(f"{mw}: expected {{'role': str, 'content': str}}, got {m!r}")
        parsed.append({"role": m["role"], "content": _text(m.get("content"), mw)})
    stop = _field(raw, "stop", (str, list), where, [])
    stop = [stop] if isinstance(stop, str) else stop
    if not all(isinstance(s, str) and s for s in stop):
        raise InputError(f"{where}: stop={stop!r} (expected non-empty strings)")
    bias_raw = _field(raw, "logit_bias", (dict,), where, {})
    bias = {}
    for key, value in bias_raw.items():
        try:
            tid = int(key)
        except ValueError:
            raise InputError(f"{where}: logit_bias key {key!r} (expected a token id)") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where}: logit_bias[{key}]={value!r} (expected a number)")
        bias[tid] = float(value)
    nlp = _field(raw, "num_logprobs", (int,), where, 0)
    if not 0 <= nlp <= MAX_NUM_LOGPROBS:
        raise InputError(f"{where}: num_logprobs={nlp} (expected 0..{MAX_NUM_LOGPROBS})")
    return Request(messages=parsed, stop=stop, logit_bias=bias, num_logprobs=nlp)


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise InputError(f"{where}: content part {part!r} (expected {{'type': 'text'}})")
            parts.append(part["text"])
        return "".join(parts)
    raise InputError(f"{where}: content={content!r} (expected a string or text parts)")


def responses_json(completions: list[Completion]) -> dict:
    """The output file's object."""
    return {
        "responses": [
            {"output_text": c.text, "finish_reason": c.finish_reason, "logprobs": c.logprobs}
            for c in completions
        ]
    }
