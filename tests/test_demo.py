"""The shipped demo model: edgellm_fn and transformers agree, the tokenizer and card are sound."""

from __future__ import annotations

import json
import re

import jax.numpy as jnp
import numpy as np
import pytest

from edgellm_fn.config import EngineConfig
from edgellm_fn.demo import demo_model_dir
from edgellm_fn.engine.xla import XlaEngine
from edgellm_fn.models.loader import load_checkpoint
from edgellm_fn.runtime.steps import decode, embed, prefill
from edgellm_fn.state.resources import create_state

NEW_TOKENS = 64
PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n    if i % 2 == 0:\n",
]


@pytest.fixture(scope="module")
def ckpt():
    return demo_model_dir()


def edgellm_greedy(ckpt, prompts: list[bytes]) -> list[list[int]]:
    """Greedy continuation of all prompts as one ragged batch: prefill, then decode steps."""
    cfg, params = load_checkpoint(ckpt, dtype="float32")
    longest = max(len(p) for p in prompts)
    ecfg = EngineConfig.create(
        cfg,
        max_batch_size=len(prompts),
        max_input_len=longest,
        kv_capacity=longest + NEW_TOKENS,
        dtype="float32",
    )
    engine = XlaEngine(ecfg, params)
    ids = np.full((len(prompts), longest), 258, np.int32)  # <|pad|>
    for r, p in enumerate(prompts):
        ids[r, : len(p)] = list(p)
    state = create_state(ecfg, batch=len(prompts))
    state = prefill(engine, state, embed(engine, ids), np.array([len(p) for p in prompts]))
    out = []
    for step in range(NEW_TOKENS):
        nxt = jnp.argmax(state.io.logits, axis=-1).astype(jnp.int32)
        out.append(np.asarray(nxt))
        if step + 1 < NEW_TOKENS:
            state = decode(engine, state, embed(engine, nxt[:, None]))
    return np.stack(out, axis=1).tolist()


def transformers_greedy(ckpt, prompts: list[bytes]) -> list[list[int]]:
    """Greedy continuation with transformers' LlamaForCausalLM (float32, argmax loop with its KV cache)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids, past, new = torch.tensor([list(p)], dtype=torch.long), None, []
            for _ in range(NEW_TOKENS):
                out = model(ids, past_key_values=past, use_cache=True)
                new.append(int(out.logits[0, -1].argmax()))
                ids, past = torch.tensor([[new[-1]]]), out.past_key_values
            outs.append(new)
    return outs


def test_greedy_matches_transformers(ckpt):
    prompts = [p.encode() for p in PROMPTS]
    ours = edgellm_greedy(ckpt, prompts)
    theirs = transformers_greedy(ckpt, prompts)
    for p, a, b in zip(PROMPTS, ours, theirs, strict=True):
        assert a == b, (
            f"prompt {p!r}: edgellm_fn {bytes(t for t in a if t < 256)!r} vs "
            f"transformers {bytes(t for t in b if t < 256)!r}"
        )
    # The model learned Python: continuations are mostly printable ASCII, not noise.
    text = b"".join(bytes(t for t in row if t < 256) for row in ours)
    printable = sum(32 <= c < 127 or c in (9, 10) for c in text)
    assert printable >= 0.9 * len(ours) * NEW_TOKENS


def random_utf8(rng: np.random.Generator, n: int) -> str:
    """``n`` random code points from ASCII, Latin, CJK, emoji and controls (no surrogates)."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0xE000, 0xFFFD)]
    chars = []
    for _ in range(n):
        lo, hi = ranges[rng.integers(len(ranges))]
        chars.append(chr(int(rng.integers(lo, hi + 1))))
    return "".join(chars)


def test_tokenizer_round_trips_utf8(ckpt):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(ckpt)
    rng = np.random.default_rng(0)
    texts = ["", "def f(x):\n\treturn x  # ok\r\n", "héllo wörld ✓ 日本語 🐍\x00\x7f"]
    texts += [random_utf8(rng, int(rng.integers(1, 200))) for _ in range(20)]
    for text in texts:
        want = list(text.encode("utf-8"))
        assert tok.encode(text).ids == want
        assert tok.decode(want) == text
        assert fast.encode(text) == want
        assert fast.decode(want) == text
    specials = {
        "<|bos|>": 256,
        "<|eos|>": 257,
        "<|pad|>": 258,
        "<|user|>": 259,
        "<|assistant|>": 260,
    }
    for s, i in specials.items():
        assert tok.token_to_id(s) == i
        assert fast.convert_tokens_to_ids(s) == i
    assert (fast.bos_token_id, fast.eos_token_id, fast.pad_token_id) == (256, 257, 258)
    chat = fast.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert chat == "<|bos|><|user|>hi<|eos|><|assistant|>"
    assert fast.encode(chat) == [256, 259, *b"hi", 257, 260]


def test_model_card_reports_the_run(ckpt):
    card = (ckpt / "MODEL_CARD.md").read_text()
    log = (ckpt / "train_log.txt").read_text()
    report = json.loads((ckpt / "train_report.json").read_text())
    config = json.loads((ckpt / "config.json").read_text())
    final = re.search(r"final held-out ([\d.]+) bits/byte", log)
    shipped = re.search(r"held-out ([\d.]+) bits/byte with the shipped", log)
    unigram = re.search(r"eval windows ([\d.]+) bits/byte", log)
    params = re.search(r"model: (\d+) parameters", log)
    assert final and shipped and unigram and params
    for value in (final, shipped, unigram):
        assert f"{float(value.group(1)):.3f}" in card
    assert f"{int(params.group(1)):,}" in card
    assert report["command"] in card and report["command"] in log
    assert f"{report['weights_bytes']:,} bytes" in card
    assert report["weights_bytes"] == (ckpt / "model.safetensors").stat().st_size
    # Well below the unigram entropy, and the shipped dtype costs almost nothing.
    assert float(shipped.group(1)) < float(unigram.group(1)) - 1.5
    assert abs(float(shipped.group(1)) - float(final.group(1))) < 0.05
    assert config["dtype"] == report["dtype"]
    size = sum(p.stat().st_size for p in ckpt.iterdir() if p.is_file())
    assert size <= 10 * 2**20


def test_demo_shows_speculative_next_to_vanilla(capsys):
    from edgellm_fn.demo import demo_eagle3_dir, run_demo

    assert demo_eagle3_dir() is not None
    assert run_demo(max_new_tokens=16) == 0
    out = capsys.readouterr().out
    assert "greedy, one jitted while_loop" in out and "sampled" in out  # the existing output
    assert "speculative greedy, EAGLE3 head" in out
    assert "same tokens as vanilla greedy: yes" in out
    row = re.search(r"speculative\s.*?([\d.]+)\s*│?\s*$", out, re.M)
    assert row and float(row.group(1)) > 1.0  # tokens per base step
