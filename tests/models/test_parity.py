"""Parity with ``transformers`` (PyTorch CPU) on random checkpoints of every family."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ..helpers import greedy, make_engine

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3"]
PROMPT = [5, 17, 99, 3, 64, 12, 7, 88, 41]


def hf_logits(model, seq: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, -1].float().numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_prefill_and_16_decode_steps_match_transformers(family, checkpoints, hf_models):
    model = hf_models[family]
    run = greedy(make_engine(checkpoints[family]), [PROMPT], steps=16)
    tokens, logits = run["tokens"], run["logits"]
    seq = list(PROMPT)
    for step, ours in enumerate(logits):
        ref = hf_logits(model, seq)
        rel = np.abs(ours[0] - ref).max() / np.abs(ref).max()
        assert rel < 1e-4, f"{family} step {step}: relative logit error {rel:.2e}"
        assert int(ref.argmax()) == int(tokens[0, step])
        seq.append(int(tokens[0, step]))
    with torch.no_grad():
        hf_tokens = model.generate(
            torch.tensor([PROMPT]),
            max_new_tokens=17,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )[0, len(PROMPT) :].numpy()
    np.testing.assert_array_equal(tokens[0], hf_tokens)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_matches_transformers_bfloat16(family, checkpoints):
    import transformers

    # A fresh bf16 model: casting the shared float32 fixture would round its weights.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoints[family], dtype=torch.bfloat16
    ).eval()
    run = greedy(make_engine(checkpoints[family], dtype="bfloat16"), [PROMPT], 8)
    tokens, logits = run["tokens"], run["logits"]
    seq = list(PROMPT)
    for step, ours in enumerate(logits):
        ref = hf_logits(model, seq)
        rel = np.abs(ours[0] - ref).max() / np.abs(ref).max()
        assert rel < 5e-2, f"{family} bf16 step {step}: relative logit error {rel:.2e}"
        assert int(ref.argmax()) == int(tokens[0, step]), f"{family} bf16 step {step}"
        seq.append(int(tokens[0, step]))


def test_sliding_window_layers_match_transformers(tmp_path):
    from ..conftest import make_hf_model

    model = make_hf_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=1)
    model.save_pretrained(tmp_path)
    engine = make_engine(str(tmp_path))
    assert engine.config.model.sliding_windows == (0, 4)
    run = greedy(engine, [PROMPT], steps=6)
    tokens, logits = run["tokens"], run["logits"]
    seq = list(PROMPT)
    for step, ours in enumerate(logits):
        ref = hf_logits(model, seq)
        assert np.abs(ours[0] - ref).max() / np.abs(ref).max() < 1e-4, f"step {step}"
        seq.append(int(tokens[0, step]))
