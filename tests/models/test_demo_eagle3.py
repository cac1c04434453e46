"""The shipped EAGLE3 head of the demo model: small, lossless, and it accepts >= 2 tokens/step."""

from __future__ import annotations

import json

import pytest

from edgellm_fn.demo import PROMPTS, demo_eagle3_dir, demo_model_dir
from edgellm_fn.engine.loading import load_engine
from edgellm_fn.engine.xla_spec import load_spec_engines
from edgellm_fn.models.eagle3_loader import load_eagle3_draft
from edgellm_fn.models.loader import load_checkpoint
from edgellm_fn.runtime.generate import generate
from edgellm_fn.runtime.spec_generate import spec_decode_generate
from edgellm_fn.text.tokenizer import Tokenizer

# The goal of issue 13 (mean accepted tokens per base step, bonus included, default tree).
MIN_ACCEPTED = 2.0
NEW_TOKENS = 64
LIMITS = dict(max_batch_size=4, max_input_len=64, kv_capacity=128)
MORE_PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n",
    "for i in range(10):\n    if i % 2 == 0:\n",
]


@pytest.fixture(scope="module")
def head():
    path = demo_eagle3_dir()
    assert path is not None, "edgellm_fn/assets/demo_eagle3 is not installed"
    return path


def test_head_is_small_and_fits_the_demo_model(head):
    base, _ = load_checkpoint(demo_model_dir())
    cfg, params, aux = load_eagle3_draft(head, base)
    assert (head / "model.safetensors").stat().st_size <= 2 * 2**20
    assert cfg.target_hidden_size == base.hidden_size and cfg.vocab_size == base.vocab_size
    assert len(aux) == 3 and "embed" not in params  # the base's embedding is shared


def test_speculative_equals_greedy_and_accepts(head):
    base_dir = demo_model_dir()
    # float32: in bfloat16 the tree-verify step and vanilla decoding may break a near-tie of
    # the base's top two logits differently (MODEL_CARD.md); float32 must match exactly.
    engine = load_engine(base_dir, dtype="float32", **LIMITS)
    tok = Tokenizer.from_dir(base_dir, vocab_size=engine.config.model.vocab_size)
    prompts = [tok.encode(p) for p in PROMPTS + MORE_PROMPTS]
    vanilla = generate(engine, tok, prompts, max_new_tokens=NEW_TOKENS, top_k=1, loop="while")
    base, draft = load_spec_engines(
        base_dir, head, tree_topk=4, tree_steps=4, verify_size=16, dtype="float32", **LIMITS
    )
    out, stats = spec_decode_generate(
        base, draft, tok, prompts, max_new_tokens=NEW_TOKENS, loop="while"
    )
    for i, (a, b) in enumerate(zip(out, vanilla, strict=True)):
        assert a.tokens == b.tokens, f"prompt {i}: speculative {a.text!r} vs greedy {b.text!r}"
    assert stats.accepted_per_round >= MIN_ACCEPTED, stats


def test_model_card_reports_the_measured_acceptance(head):
    card = (head / "MODEL_CARD.md").read_text()
    report = json.loads((head / "train_report.json").read_text())
    assert report["command"] in card
    for row in report["acceptance"].values():
        for dtype in ("float32", "bfloat16"):
            assert f"{row[dtype]['accepted_per_round']:.2f}" in card
        same, rows = row["float32"]["rows_equal_vanilla"].split("/")
        assert same == rows
    for dtype in ("float32", "bfloat16"):
        assert report["acceptance"]["default"][dtype]["accepted_per_round"] >= MIN_ACCEPTED
