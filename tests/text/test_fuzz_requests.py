"""Bounded fuzzing of request JSON: success or an InputError naming the file and the field."""

from __future__ import annotations

import copy
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellm_fn.errors import InputError
from edgellm_fn.text.requests import MAX_GENERATE_LENGTH, load_requests

from ..fuzz_common import JSON, Tally

VALID = {
    "batch_size": 2,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "max_generate_length": 9,
    "apply_chat_template": True,
    "requests": [
        {
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "stop": ["\n"],
            "logit_bias": {"7": -100},
            "num_logprobs": 3,
        }
    ],
}
TOP = sorted(k for k in VALID if k != "requests") + ["requests", "beam_width"]
REQ = ["messages", "stop", "logit_bias", "num_logprobs", "lora_name", "temperature"]
MISSING = object()
MUTATION = st.one_of(
    st.tuples(st.just("top"), st.sampled_from(TOP), st.one_of(st.just(MISSING), JSON)),
    st.tuples(st.just("req"), st.sampled_from(REQ), st.one_of(st.just(MISSING), JSON)),
    st.tuples(st.just("msg"), st.sampled_from(["role", "content"]), JSON),
)
TALLY = Tally("requests")


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    TALLY.report()


def _first_dict(items) -> dict:
    """``items[0]`` when it is a dict in a non-empty list, else a scratch dict."""
    return items[0] if isinstance(items, list) and items and isinstance(items[0], dict) else {}


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_requests_parse_or_name_the_field(tmp_path, mutations):
    raw = copy.deepcopy(VALID)
    for level, key, value in mutations:
        req = _first_dict(raw.get("requests"))
        target = {"top": raw, "req": req, "msg": _first_dict(req.get("messages"))}[level]
        if value is MISSING:
            target.pop(key, None)
        else:
            target[key] = value
    path = tmp_path / "req.json"
    path.write_bytes(json.dumps(raw).encode("utf-8", "surrogatepass"))
    try:
        batch = load_requests(path)
    except InputError as e:
        TALLY.add("InputError")
        message = str(e)
        assert message.startswith(f"{path}: "), message
        assert any(k in message for k in TOP + REQ + ["role", "content", "unknown field"]), message
        return
    TALLY.add("ok")
    assert 1 <= batch.max_generate_length <= MAX_GENERATE_LENGTH
    assert batch.temperature is None or (
        math.isfinite(batch.temperature) and batch.temperature >= 0
    )
    temperature, top_p, top_k = batch.sampling()
    assert temperature >= 0 and 0 < top_p <= 1 and top_k >= 0
    for r in batch.requests:
        for m in r.messages:
            (m["role"] + m["content"]).encode("utf-8")  # no lone surrogate got through
        assert all(math.isfinite(b) for b in r.logit_bias.values())
