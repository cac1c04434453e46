"""Edge-LLM request JSON: every field parsed and honoured, bad input named precisely."""

from __future__ import annotations

import json

import pytest

from edgellm_fn import InputError, cli
from edgellm_fn.text.requests import load_requests, parse_requests

GOOD = {
    "batch_size": 2,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 5,
    "max_generate_length": 9,
    "apply_chat_template": True,
    "available_lora_weights": {},
    "requests": [
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            ],
            "stop": "\n",
            "logit_bias": {"7": -100, "9": 2.5},
            "num_logprobs": 3,
            "lora_name": None,
            "save_system_prompt_kv_cache": False,
            "disable_spec_decode": True,
        },
    ],
}


def test_every_field_is_parsed():
    batch = parse_requests(GOOD)
    assert (batch.batch_size, batch.temperature, batch.top_p, batch.top_k) == (2, 0.7, 0.9, 5)
    assert batch.max_generate_length == 9 and batch.apply_chat_template
    req = batch.requests[0]
    assert req.messages[1] == {"role": "user", "content": "hi"}
    assert req.stop == ["\n"] and req.logit_bias == {7: -100.0, 9: 2.5} and req.num_logprobs == 3


def _bad(**changes):
    raw = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("req_"):
            raw["requests"][0][key[4:]] = value
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_bad(top_p=1.5), r"top_p=1.5 \(expected 0 < top_p <= 1\)"),
        (_bad(temperature="hot"), r"temperature='hot' \(expected int/float\)"),
        (_bad(top_k=-1), r"top_k=-1 \(expected >= 0"),
        (_bad(max_generate_length=0), r"max_generate_length=0 \(expected >= 1\)"),
        (_bad(apply_chat_template="yes"), r"apply_chat_template='yes' \(expected bool\)"),
        (_bad(batch_size=True), r"batch_size=True \(expected int\)"),
        (_bad(requests=[]), r"requests=\[\] \(expected a non-empty list\)"),
        (_bad(beam_width=4), r"unknown field 'beam_width'"),
        (_bad(req_temperature=1), r"requests\[0\]: unknown field 'temperature'"),
        (_bad(req_messages=[{"content": "x"}]), r"requests\[0\].messages\[0\]: expected \{'role'"),
        (_bad(req_num_logprobs=51), r"num_logprobs=51 \(expected 0..50\)"),
        (_bad(req_logit_bias={"x": 1}), r"logit_bias key 'x' \(expected a token id 0..16777215\)"),
        (_bad(req_logit_bias={"3": "big"}), r"logit_bias\[3\]='big' \(expected a number\)"),
        (_bad(req_stop=[""]), r"stop=\[''\] \(expected non-empty strings\)"),
        (_bad(req_lora_name=5), r"lora_name=5 \(expected str\)"),
        (_bad(available_lora_weights={"a": 5}), r"available_lora_weights\['a'\]=5 \(expected a non-empty name mapped to a PEFT adapter directory path\)"),
        (_bad(available_lora_weights=["a"]), r"available_lora_weights=\['a'\] \(expected dict\)"),
    ],
)
def test_bad_fields_are_named(raw, match):
    with pytest.raises(InputError, match=match):
        parse_requests(raw)


def test_malformed_file(tmp_path):
    (tmp_path / "r.json").write_text('{"requests": [}')
    with pytest.raises(InputError, match=r"r.json: invalid JSON at line 1 column 15"):
        load_requests(tmp_path / "r.json")


def test_cli_reports_errors_and_honours_bias_limit(tmp_path, checkpoints, capsys):
    raw = _bad(req_logit_bias={"7": 150})
    (tmp_path / "r.json").write_text(json.dumps(raw))
    code = cli.main(
        ["generate", "--model", checkpoints["llama"], "--input-file", str(tmp_path / "r.json")]
    )
    assert code == 2
    assert "logit_bias[0][7]=150.0 (expected |value| <= 100)" in capsys.readouterr().err


def test_cli_inspect_and_bench(checkpoints, capsys, tmp_path):
    assert (
        cli.main(
            [
                "inspect",
                "--model",
                checkpoints["qwen3"],
                "--kv-capacity",
                "64",
                "--max-input-len",
                "32",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "present_key_1" in text and "(aliases past_key_1)" in text
    assert "profile 0: batch 1..4  seq_len 1..32" in text
    out = tmp_path / "bench.json"
    assert (
        cli.main(
            [
                "bench",
                "--model",
                checkpoints["qwen3"],
                "--kv-capacity",
                "64",
                "--max-input-len",
                "32",
                "--context",
                "16",
                "--steps",
                "5",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    row = json.loads(out.read_text())[0]
    assert row["decode_ms"] > 0 and row["prefill_tokens_per_s"] > 0 and row["context"] == 16


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (
            _bad(max_generate_length=10_000_000_000),
            r"max_generate_length=10000000000 \(expected <= 16777216\); no KV cache holds",
        ),
        (_bad(temperature=float("nan")), r"temperature=nan \(expected a finite number\)"),
        (_bad(temperature=float("inf")), r"temperature=inf \(expected a finite number\)"),
        (_bad(temperature=10**400), r"temperature=.* \(expected a finite number\)"),
        (_bad(top_k=10**12), r"top_k=1000000000000 \(expected <= 16777216\); no vocab"),
        (_bad(batch_size=10**9), r"batch_size=1000000000 \(expected <= 65536\)"),
        (
            _bad(req_logit_bias={"7": float("nan")}),
            r"logit_bias\[7\]=nan \(expected a finite number\)",
        ),
        (_bad(req_logit_bias={"1_0": 1}), r"logit_bias key '1_0' \(expected a token id"),
        (
            _bad(req_logit_bias={"99999999999": 1}),
            r"logit_bias key '99999999999' \(expected a token id",
        ),
        (
            _bad(req_messages=[{"role": "user", "content": "hi \ud800 there"}]),
            r"requests\[0\].messages\[0\]: content='hi \\ud800 there' has a lone surrogate '\\ud800' at index 3 \(expected valid Unicode text\)",
        ),
        (
            _bad(req_messages=[{"role": "\udfff", "content": "x"}]),
            r"messages\[0\]: role='\\udfff' has a lone surrogate",
        ),
        (
            _bad(req_messages=[{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}]),
            r"messages\[0\]: content\[0\].text='\\ud83d' has a lone surrogate",
        ),
        (
            _bad(req_stop=["ok", "\ud800"]),
            r"requests\[0\]: stop\[1\]='\\ud800' has a lone surrogate",
        ),
    ],
)
def test_hostile_fields_are_named(raw, match):
    with pytest.raises(InputError, match=match):
        parse_requests(raw)


def test_generate_length_limit_is_a_parameter():
    assert parse_requests(_bad(max_generate_length=64), generate_length_limit=64)
    with pytest.raises(InputError, match=r"max_generate_length=65 \(expected <= 64\)"):
        parse_requests(_bad(max_generate_length=65), generate_length_limit=64)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"requests": "\xff"}', r"r.json: byte 14=b'\\xff' \(expected UTF-8 text\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"r.json: JSON nesting too deep"),
        (json.dumps(_bad(req_stop=["\ud800"])).encode(), r"r.json: requests\[0\]: stop\[0\]="),
    ],
)
def test_hostile_request_files(tmp_path, content, match):
    (tmp_path / "r.json").write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_requests(tmp_path / "r.json")
    with pytest.raises(InputError, match=r"nope.json: file not found \(expected a request JSON"):
        load_requests(tmp_path / "nope.json")


def test_output_json_is_strict():
    from edgellm_fn.runtime.generate import Completion
    from edgellm_fn.text.requests import MIN_LOGPROB, responses_json, responses_text

    lp = [
        {
            "token_id": 3,
            "token": "a",
            "logprob": float("nan"),
            "top_logprobs": [{"token_id": 4, "token": "b", "logprob": float("-inf")}],
        }
    ]
    done = Completion(text="a", tokens=[3], finish_reason="length", logprobs=lp, prompt_tokens=1)
    text = responses_text([done])
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)["responses"][0]["logprobs"][0]
    assert back["logprob"] is None and back["top_logprobs"][0]["logprob"] == MIN_LOGPROB == -9999.0
    json.dumps(responses_json([done]), allow_nan=False)  # what cli.py writes is strict too
    assert lp[0]["logprob"] != lp[0]["logprob"]  # the completion itself is untouched (NaN)


def test_lora_fields_are_parsed():
    raw = json.loads(json.dumps(GOOD))
    raw["available_lora_weights"] = {"math": "adapters/math"}
    raw["requests"].append({**raw["requests"][0], "lora_name": "math"})
    batch = parse_requests(raw)
    assert batch.available_lora_weights == {"math": "adapters/math"}
    assert [r.lora_name for r in batch.requests] == [None, "math"]
