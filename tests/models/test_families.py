"""Mistral, Gemma 2, Gemma 3 text and Phi-3 against transformers: ragged, chunked, decoded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgellm_fn as ef

from ..helpers import make_engine

NEW_FAMILIES = ["mistral", "gemma2", "gemma3", "phi3"]
PROMPTS = [[5, 17, 99, 3, 64, 12, 7, 88, 41, 23, 9], [44, 8, 120, 61]]
FIRST_CHUNK = np.array([6, 3])  # tokens of each row's first prefill chunk


def _chunk(prompts: list[list[int]], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.zeros((len(prompts), int((hi - lo).max())), np.int32)
    for r, p in enumerate(prompts):
        out[r, : hi[r] - lo[r]] = p[lo[r] : hi[r]]
    return out


@pytest.mark.parametrize("family", NEW_FAMILIES)
def test_ragged_chunked_prefill_and_16_decode_steps_match_transformers(
    family, checkpoints, hf_models
):
    """Rows of different lengths, each prefilled in two chunks, then 16 greedy steps: every
    step's logits of every row equal transformers' on that row's sequence alone."""
    engine = make_engine(checkpoints[family])
    lengths = np.array([len(p) for p in PROMPTS])
    state = ef.create_state(engine.config, len(PROMPTS))
    first = _chunk(PROMPTS, np.zeros(2, int), FIRST_CHUNK)
    state = ef.prefill(engine, state, ef.embed(engine, first), FIRST_CHUNK)
    rest = _chunk(PROMPTS, FIRST_CHUNK, lengths)
    state = ef.prefill(engine, state, ef.embed(engine, rest), lengths, append=True)
    seqs = [list(p) for p in PROMPTS]
    for step in range(17):
        logits = np.asarray(state.io.logits)
        for r, seq in enumerate(seqs):
            with torch.no_grad():
                ref = hf_models[family](torch.tensor([seq])).logits[0, -1].numpy()
            rel = np.abs(logits[r] - ref).max() / np.abs(ref).max()
            assert rel < 1e-4, f"{family} row {r} step {step}: relative logit error {rel:.2e}"
            assert int(logits[r].argmax()) == int(ref.argmax()), f"{family} row {r} step {step}"
        tokens = logits.argmax(-1)
        for r, t in enumerate(tokens):
            seqs[r].append(int(t))
        if step < 16:
            state = ef.decode(engine, state, ef.embed(engine, tokens[:, None]))


def test_each_family_feature_is_parsed(checkpoints):
    """The tiny checkpoints really exercise the features (so parity is not vacuous)."""
    mistral = ef.ModelConfig.from_file(checkpoints["mistral"])
    assert mistral.sliding_windows == (5, 5) and mistral.llama_compatible
    gemma2 = ef.ModelConfig.from_file(checkpoints["gemma2"])
    assert gemma2.sliding_windows == (5, 0) and gemma2.sandwich_norms
    assert (gemma2.attn_softcap, gemma2.final_softcap) == (1.5, 2.5)
    assert gemma2.attn_scale == pytest.approx(24**-0.5) and gemma2.embed_scale == 8.0
    gemma3 = ef.ModelConfig.from_file(checkpoints["gemma3"])
    assert gemma3.qk_norm and gemma3.sliding_windows == (5, 0, 5)
    assert (gemma3.rope.rope_type, gemma3.rope.theta, gemma3.local_rope.theta) == (
        "linear",
        50000.0,
        100.0,
    )
    assert gemma3.rope_width == 32
    phi3 = ef.ModelConfig.from_file(checkpoints["phi3"])
    assert phi3.rope.rope_type == "longrope" and phi3.rope.rotary_dim == 8
    assert phi3.rope.original_max_position_embeddings == 64


def test_gemma_takes_the_reference_path_with_a_named_reason(checkpoints):
    engine = make_engine(checkpoints["gemma2"])
    why = ef.models.fused.kernel_support(engine.config, 1, "gpu")
    assert "soft-capping" in why and "sandwich_norms" in why
    assert (
        ef.models.fused.kernel_support(make_engine(checkpoints["mistral"]).config, 1, "cpu") is None
    )
