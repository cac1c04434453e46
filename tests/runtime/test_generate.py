"""End-to-end generation: CLI and ``generate`` against ``transformers.generate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgellm_fn import cli
from edgellm_fn.engine.loading import load_engine
from edgellm_fn.errors import InputError
from edgellm_fn.runtime.generate import generate
from edgellm_fn.text.tokenizer import Tokenizer

PROMPTS = ["def add(a, b):", "x = [1, 2, 3]\nfor i in x:\n    print(i)", "#"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_cli_greedy_equals_transformers_generate(family, checkpoints, hf_models, tmp_path):
    ckpt = checkpoints[family]
    request = {
        "batch_size": 3,
        "top_k": 1,
        "max_generate_length": 12,
        "apply_chat_template": False,
        "requests": [{"messages": [{"role": "user", "content": p}]} for p in PROMPTS],
    }
    (tmp_path / "req.json").write_text(json.dumps(request))
    out = tmp_path / "out.json"
    assert (
        cli.main(
            [
                "generate",
                "--model",
                ckpt,
                "--input-file",
                str(tmp_path / "req.json"),
                "--output-file",
                str(out),
                "--kv-capacity",
                "96",
                "--max-input-len",
                "64",
            ]
        )
        == 0
    )
    responses = json.loads(out.read_text())["responses"]
    tok = Tokenizer.from_dir(ckpt)
    for prompt, resp in zip(PROMPTS, responses, strict=True):
        ids = tok.encode(prompt)
        with torch.no_grad():
            hf = hf_models[family].generate(
                torch.tensor([ids]),
                max_new_tokens=12,
                do_sample=False,
                eos_token_id=2,
                pad_token_id=0,
            )
        new = [t for t in hf[0, len(ids) :].tolist() if t != 2]
        assert resp["output_text"] == tok.decode(new)
        assert resp["finish_reason"] == ("stop" if 2 in hf[0, len(ids) :].tolist() else "length")


@pytest.fixture(scope="module")
def qwen3(checkpoints):
    ckpt = checkpoints["qwen3"]
    return load_engine(
        ckpt, max_batch_size=3, max_input_len=64, kv_capacity=96
    ), Tokenizer.from_dir(ckpt)


def test_stop_strings_bias_and_logprobs_are_honoured(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    base = generate(engine, tok, prompts, max_new_tokens=16, top_k=1)
    banned = base[0].tokens[0]
    stop_at = base[1].text[3:5]
    for loop in ("python", "while"):
        out = generate(
            engine,
            tok,
            prompts,
            max_new_tokens=16,
            top_k=1,
            loop=loop,
            logit_bias=[{banned: -100.0}, None, None],
            num_logprobs=[0, 0, 4],
            stop=[[], [stop_at], []],
        )
        assert banned not in out[0].tokens
        assert out[1].text == base[1].text[: base[1].text.index(stop_at)]
        assert out[1].finish_reason == "stop"
        assert out[2].text == base[2].text and out[2].logprobs is not None
        entry = out[2].logprobs[0]
        assert len(entry["top_logprobs"]) == 4
        assert entry["top_logprobs"][0]["token_id"] == entry["token_id"]  # greedy: best token
        assert out[0].logprobs is None


def test_sampling_is_deterministic_per_seed_and_loop_independent(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95, top_k=0)
    a = generate(engine, tok, prompts, seed=3, loop="python", **kw)
    b = generate(engine, tok, prompts, seed=3, loop="while", **kw)
    c = generate(engine, tok, prompts, seed=4, loop="python", **kw)
    assert [x.tokens for x in a] == [x.tokens for x in b]
    assert [x.tokens for x in a] != [x.tokens for x in c]


def test_streaming_deltas_concatenate_to_the_text(qwen3):
    engine, tok = qwen3
    deltas: dict[int, str] = {}
    out = generate(
        engine,
        tok,
        [tok.encode(p) for p in PROMPTS],
        max_new_tokens=10,
        top_k=1,
        on_text=lambda i, s: deltas.__setitem__(i, deltas.get(i, "") + s),
    )
    assert [deltas.get(i, "") for i in range(3)] == [c.text for c in out]


def test_prompt_too_long_is_rejected(qwen3):
    engine, tok = qwen3
    with pytest.raises(
        ValueError, match=r"prompt 0 has 65 tokens \(expected 1..max_input_len=64\)"
    ):
        generate(engine, tok, [[5] * 65], max_new_tokens=4)
    assert np.isfinite(generate(engine, tok, [[5] * 64], max_new_tokens=1)[0].tokens[0])


def _stream(engine, tok, prompts, **kw):
    deltas: dict[int, list[str]] = {}
    out = generate(
        engine, tok, prompts, on_text=lambda i, s: deltas.setdefault(i, []).append(s), **kw
    )
    return out, ["".join(deltas.get(i, [])) for i in range(len(prompts))]


def test_streaming_never_emits_any_part_of_a_stop_string(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    base = generate(engine, tok, prompts, max_new_tokens=16, top_k=1)
    text = base[1].text
    stop = text[3:7]  # several characters: it spans tokens
    assert len(stop) == 4 and text.index(stop) == 3
    for loop in ("python", "while"):
        out, streamed = _stream(
            engine, tok, prompts, max_new_tokens=16, top_k=1, loop=loop, stop=[[], [stop], []]
        )
        assert out[1].text == streamed[1] == text[:3]  # nothing of the stop string streamed
        assert [c.text for c in out] == streamed


def test_streaming_releases_held_back_text_that_never_became_a_stop(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    base = generate(engine, tok, prompts, max_new_tokens=16, top_k=1)
    # A stop string whose first characters end the text: held back while it could still match,
    # released when generation ends without it.
    stop = base[0].text[-2:] + "\x00"
    out, streamed = _stream(engine, tok, prompts, max_new_tokens=16, top_k=1, stop=[stop, [], []])
    assert out[0].text == streamed[0] == base[0].text
    assert out[0].finish_reason == base[0].finish_reason


def test_while_loop_keeps_no_token_after_the_stop(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    base = generate(engine, tok, prompts, max_new_tokens=16, top_k=1)
    stop = [[base[0].text[2:4]], [base[1].text[5:7]], []]
    py = generate(engine, tok, prompts, max_new_tokens=16, top_k=1, stop=stop, loop="python")
    wl = generate(engine, tok, prompts, max_new_tokens=16, top_k=1, stop=stop, loop="while")
    assert [c.tokens for c in wl] == [c.tokens for c in py]
    assert [c.text for c in wl] == [c.text for c in py]
    for r in (0, 1):
        assert len(wl[r].tokens) < len(base[r].tokens) and wl[r].finish_reason == "stop"
        assert tok.decode(wl[r].tokens[:-1]).find(stop[r][0]) < 0  # the last token completes it
        assert stop[r][0] in tok.decode(wl[r].tokens)


@pytest.mark.parametrize("name", ["logit_bias", "num_logprobs", "stop", "temperature", "top_k"])
@pytest.mark.parametrize("count", [2, 4])
def test_per_prompt_lists_must_have_one_entry_per_prompt(qwen3, name, count):
    engine, tok = qwen3
    value = {"logit_bias": None, "num_logprobs": 1, "stop": ["x"], "temperature": 0.5}
    with pytest.raises(
        InputError,
        match=rf"generate: len\({name}\)={count} \(expected one entry per prompt, len\(prompts\)=3\)",
    ):
        generate(
            engine, tok, [[5], [6], [7]], max_new_tokens=2, **{name: [value.get(name, 1)] * count}
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(batch_size=0), r"batch_size=0 \(expected 1..max_batch_size=3, or None"),
        (dict(batch_size=-2), r"batch_size=-2 \(expected 1..max_batch_size=3"),
        (dict(batch_size=4), r"batch_size=4 \(expected 1..max_batch_size=3"),
        (dict(stop=[""]), r"stop\[0\]\[0\]='' \(expected a non-empty string\)"),
        (dict(stop=[["a", ""]]), r"stop\[0\]\[1\]='' \(expected a non-empty string\)"),
        (dict(seed=2**64), r"seed=18446744073709551616 \(expected an int in \[0, 2\*\*63 - 1\]\)"),
        (dict(seed=-1), r"seed=-1 \(expected an int in \[0, 2\*\*63 - 1\]\)"),
        (dict(max_new_tokens=0), r"max_new_tokens=0 \(expected an int >= 1\)"),
        (dict(loop="for"), r"loop='for' \(expected 'python' or 'while'\)"),
        (
            dict(logit_bias=[{128: 1.0}]),
            r"generate: logit_bias\[0\] id=128 \(expected 0 <= id < vocab_size=128\)",
        ),
        (dict(temperature=-1.0), r"generate: temperature\[0\]=-1.0 \(expected >= 0\)"),
    ],
)
def test_bad_generate_arguments_are_named(qwen3, kwargs, match):
    engine, tok = qwen3
    with pytest.raises(InputError, match=match):
        generate(engine, tok, [[5, 6]], max_new_tokens=kwargs.pop("max_new_tokens", 2), **kwargs)


@pytest.mark.parametrize(
    ("prompts", "match"),
    [
        (
            [[5, 128]],
            r"generate: prompts\[0\]\[1\]=128 \(expected a token id 0..127, vocab_size=128\)",
        ),
        ([[5], [-1, 3]], r"generate: prompts\[1\]\[0\]=-1 \(expected a token id 0..127"),
        ([[5.0]], r"generate: prompts\[0\]: token ids of dtype float64 \(expected integers\)"),
        ("hello", r"generate: prompts='hello' \(expected a list of prompts: token ids, strings"),
    ],
)
def test_out_of_vocabulary_prompt_ids_are_refused(qwen3, prompts, match):
    engine, tok = qwen3
    with pytest.raises(InputError, match=match):
        generate(engine, tok, prompts, max_new_tokens=2)


def test_a_bad_later_prompt_fails_before_any_batch_runs(qwen3):
    engine, tok = qwen3
    seen = []
    with pytest.raises(InputError, match=r"logit_bias\[3\] id=500"):
        generate(
            engine,
            tok,
            [[5]] * 4,
            max_new_tokens=2,
            batch_size=1,
            logit_bias=[None, None, None, {500: 1.0}],
            on_text=lambda i, s: seen.append(i),
        )
    assert seen == []  # nothing generated, so nothing lost


def test_greedy_unless_a_sampling_value_is_given(qwen3):
    engine, tok = qwen3
    prompts = [tok.encode(p) for p in PROMPTS]
    kw = dict(max_new_tokens=8, seed=5)
    greedy = generate(engine, tok, prompts, top_k=1, **kw)
    assert [c.tokens for c in generate(engine, tok, prompts, **kw)] == [c.tokens for c in greedy]
    sampled = generate(engine, tok, prompts, temperature=1.5, **kw)  # temperature alone samples
    explicit = generate(engine, tok, prompts, temperature=1.5, top_p=1.0, top_k=0, **kw)
    assert [c.tokens for c in sampled] == [c.tokens for c in explicit]
    assert [c.tokens for c in sampled] != [c.tokens for c in greedy]


def test_token_limit_reports_the_kv_capacity_clamp(qwen3):
    engine, tok = qwen3  # kv capacity 96
    out = generate(
        engine, tok, [[5] * 60, [5] * 3], max_new_tokens=50, top_k=1, logit_bias=[{2: -100.0}] * 2
    )
    assert [c.token_limit for c in out] == [37, 50]
    assert len(out[0].tokens) == 37 and out[0].finish_reason == "length"


@pytest.mark.parametrize("loop", ["python", "while"])
def test_a_huge_max_new_tokens_allocates_only_what_the_kv_cache_holds(qwen3, loop):
    engine, tok = qwen3  # kv capacity 96: no row can generate more, whatever is asked
    out = generate(
        engine, tok, [[5] * 50], max_new_tokens=10**10, top_k=1, logit_bias=[{2: -100.0}], loop=loop
    )
    assert out[0].token_limit == 47 == len(out[0].tokens) and out[0].finish_reason == "length"
