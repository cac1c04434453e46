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


def _hf_incremental(model, prompt: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """transformers' own incremental greedy decoding (a KV cache, one token per forward)."""
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
        logits, cache = [out.logits[0, -1].numpy()], out.cache
        tokens = [int(logits[-1].argmax())]
        for _ in range(steps):
            out = model(torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            cache = out.cache
            logits.append(out.logits[0, -1].numpy())
            tokens.append(int(logits[-1].argmax()))
    return tokens, logits


def test_phi3_longrope_switches_to_the_long_factors_per_row_like_transformers(
    checkpoints, hf_models
):
    """Past original_max_position_embeddings (64) a row rotates its new tokens with the long
    factors: one row crosses 64 while decoding, the other starts past it (its whole prompt is
    long); each equals transformers decoding it alone with its KV cache."""
    engine = make_engine(checkpoints["phi3"], max_input_len=80, kv_capacity=128)
    assert engine.config.long_rope_switch == 64 and engine.config.per_row_rope
    rng = np.random.RandomState(3)
    prompts = [[int(t) for t in rng.randint(3, 128, n)] for n in (50, 70)]
    steps = 24
    ids = np.zeros((2, 70), np.int32)
    for r, p in enumerate(prompts):
        ids[r, : len(p)] = p
    state = ef.create_state(engine.config, 2)
    state = ef.prefill(engine, state, ef.embed(engine, ids), np.array([50, 70]))
    ours = [np.asarray(state.io.logits)]
    for _ in range(steps):
        tok = ours[-1].argmax(-1)[:, None]
        state = ef.decode(engine, state, ef.embed(engine, tok))
        ours.append(np.asarray(state.io.logits))
    for r, p in enumerate(prompts):
        tokens, ref = _hf_incremental(hf_models["phi3"], p, steps)
        for step, want in enumerate(ref):
            got = ours[step][r]
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert rel < 1e-4, f"row {r} step {step}: relative logit error {rel:.2e}"
        assert [int(x[r].argmax()) for x in ours] == tokens
    # rows never affect each other: row 0 alone equals row 0 beside the long row
    state = ef.create_state(engine.config, 1)
    state = ef.prefill(engine, state, ef.embed(engine, ids[:1, :50]), np.array([50]))
    assert np.allclose(np.asarray(state.io.logits)[0], ours[0][0], atol=1e-5)
    short = make_engine(checkpoints["phi3"], max_input_len=64, kv_capacity=64)
    assert short.config.long_rope_switch is None and not short.config.per_row_rope
    with pytest.raises(ef.ConfigError, match="LongRoPE original_max_position_embeddings=64"):
        from edgellm_fn.models.onnx.export import check_exportable

        check_exportable(engine.config)
