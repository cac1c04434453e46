"""OpenAI request bodies -> ``batching.Request`` fields, each bad field a named ``FieldError``."""

from __future__ import annotations

import math
from typing import Any

from ..runtime.gen_defaults import GenerationDefaults

MAX_TOP_LOGPROBS = 20
MAX_STOPS = 4
MAX_BIAS = 300


class FieldError(ValueError):
    """A bad request field: ``param`` names it (OpenAI's ``error.param``)."""

    def __init__(self, param: str, message: str, status: int = 400):
        super().__init__(f"{param}: {message}")
        self.param, self.status = param, status


def _num(body: dict, key: str, low: float, high: float, default: float | None) -> float | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FieldError(key, f"{value!r} (expected a number)")
    if not low <= value <= high:
        raise FieldError(key, f"{value!r} (expected {low:g} <= {key} <= {high:g})")
    return float(value)


def _int(body: dict, key: str, low: int, high: int | None, default: int | None) -> int | None:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(key, f"{value!r} (expected an integer)")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise FieldError(key, f"{value} (expected an integer {bound})")
    return value


def sampling_fields(body: dict, defaults: GenerationDefaults, chat: bool) -> dict[str, Any]:
    """The ``Request`` keyword arguments of an OpenAI body (unset fields: ``defaults``).

    Raises:
      FieldError: naming the first bad field.
    """
    if not isinstance(body, dict):
        raise FieldError("body", "expected a JSON object")
    n = _int(body, "n", 1, 1, 1)
    del n  # n = 1 only
    temperature = _num(body, "temperature", 0.0, 2.0, None)
    top_k = _int(body, "top_k", -1, None, None)
    top_k = 0 if top_k == -1 else top_k  # vLLM's -1 = off
    out: dict[str, Any] = dict(
        temperature=defaults.resolve("temperature", temperature),
        top_p=defaults.resolve("top_p", _num(body, "top_p", 0.0, 1.0, None)),
        top_k=defaults.resolve("top_k", top_k),
        min_p=defaults.resolve("min_p", _num(body, "min_p", 0.0, 1.0, None)),
        repetition_penalty=defaults.resolve(
            "repetition_penalty", _num(body, "repetition_penalty", 0.0, 100.0, None)
        ),
        presence_penalty=_num(body, "presence_penalty", -2.0, 2.0, 0.0),
        frequency_penalty=_num(body, "frequency_penalty", -2.0, 2.0, 0.0),
        seed=_int(body, "seed", 0, 2**31 - 1, None),
    )
    if temperature is not None and temperature == 0:
        out["top_k"] = 1  # greedy, whatever the checkpoint's top_k
    if out["top_p"] == 0:
        raise FieldError("top_p", "0 (expected 0 < top_p <= 1)")
    if out["repetition_penalty"] == 0:
        raise FieldError("repetition_penalty", "0 (expected > 0)")
    key = (
        "max_completion_tokens"
        if chat and body.get("max_completion_tokens") is not None
        else ("max_tokens")
    )
    out["max_tokens"] = _int(body, key, 1, None, defaults.max_new_tokens)
    if chat:
        if not isinstance(body.get("logprobs", False), bool):
            raise FieldError("logprobs", f"{body['logprobs']!r} (expected a boolean)")
        top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
        if top and not body.get("logprobs"):
            raise FieldError("top_logprobs", "set without logprobs=true")
        out["logprobs"] = bool(body.get("logprobs"))
        out["num_logprobs"] = top
    else:
        lp = _int(body, "logprobs", 0, 5, None)
        out["logprobs"] = lp is not None
        out["num_logprobs"] = lp or 0
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOPS:
        raise FieldError("stop", f"{body.get('stop')!r} (expected a string or <= 4 strings)")
    if not all(isinstance(s, str) and s for s in stop):
        raise FieldError("stop", "expected non-empty strings")
    out["stop"] = stop
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict) or len(bias) > MAX_BIAS:
        raise FieldError("logit_bias", f"expected an object of <= {MAX_BIAS} token ids")
    parsed = {}
    for k, v in bias.items():
        try:
            tid = int(k)
        except ValueError:
            raise FieldError("logit_bias", f"key {k!r} (expected a token id)") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
            raise FieldError("logit_bias", f"[{k}]={v!r} (expected a number in [-100, 100])")
        parsed[tid] = float(v)
    out["logit_bias"] = parsed
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise FieldError("stream", f"{stream!r} (expected a boolean)")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise FieldError("stream_options", "expected an object")
    out["stream"], out["include_usage"] = stream, bool(opts.get("include_usage", False))
    return out


#: Chat-template fields of a chat request (vLLM's names) and the types they take.
_CHAT_TEMPLATE_FIELDS = {
    "add_generation_prompt": bool,
    "continue_final_message": bool,
    "tools": list,
    "chat_template_kwargs": dict,
}


def chat_template_options(body: dict) -> dict[str, Any]:
    """``Tokenizer.apply_chat_template`` options of a chat request: ``tools`` (JSON schemas of
    ``{"type": "function", "function": {...}}``), ``add_generation_prompt``,
    ``continue_final_message`` and ``chat_template_kwargs`` (template variables such as
    ``enable_thinking``).

    Raises:
      FieldError: naming the first bad field.
    """
    out: dict[str, Any] = {}
    for key, kind in _CHAT_TEMPLATE_FIELDS.items():
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            raise FieldError(key, f"{value!r} (expected a JSON {_JSON_NAMES[kind]})")
        out[key] = value
    for i, tool in enumerate(out.get("tools", [])):
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise FieldError("tools", f"[{i}]={tool!r} (expected {{'type': 'function', ...}})")
    extra = out.pop("chat_template_kwargs", {})
    clash = sorted(set(extra) & {"messages", "tools", *_CHAT_TEMPLATE_FIELDS})
    if clash:
        raise FieldError("chat_template_kwargs", f"key {clash[0]!r} (set it as its own field)")
    if out.get("continue_final_message") and out.get("add_generation_prompt"):
        raise FieldError(
            "continue_final_message", "with add_generation_prompt=true (expected one of them)"
        )
    return {**extra, **out}


_JSON_NAMES = {bool: "boolean", list: "array", dict: "object"}
