"""End-to-end generation: CLI and ``generate`` against ``transformers.generate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgellm_fn import cli
from edgellm_fn.engine.loading import load_engine
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
