"""Penalties, min-p, per-row seeds and generation_config defaults."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import edgellm_fn as ef
from edgellm_fn.errors import ConfigError, InputError
from edgellm_fn.runtime import loops
from edgellm_fn.runtime.gen_defaults import GenerationDefaults
from edgellm_fn.runtime.generate import generate
from edgellm_fn.runtime.sampling import (
    SamplingConfig,
    filter_logits,
    make_sampling_params,
    sample,
)
from edgellm_fn.text.tokenizer import Tokenizer

from ..helpers import make_engine

V = 16
CFG = SamplingConfig()


def _params(b=2, **kw):
    return make_sampling_params(b, vocab_size=V, config=CFG, **kw)[1]


def test_presence_frequency_and_repetition_match_hand_computed_logits(rng):
    logits = rng.randn(2, V).astype(np.float32) * 3
    counts = np.zeros((2, V), np.int32)
    counts[0, [1, 4]] = [2, 1]
    counts[1, 7] = 3
    prompts = [[3, 4], [9]]
    params = _params(
        temperature=0.0,
        presence_penalty=[0.5, -1.0],
        frequency_penalty=[0.25, 1.5],
        repetition_penalty=[1.3, 0.7],
        prompts=prompts,
    )
    want = logits.copy()
    for b, rp in enumerate([1.3, 0.7]):
        seen = set(prompts[b]) | set(np.flatnonzero(counts[b]))
        for j in seen:
            want[b, j] = want[b, j] * rp if want[b, j] < 0 else want[b, j] / rp
    want -= counts * np.array([[0.25], [1.5]]) + (counts > 0) * np.array([[0.5], [-1.0]])
    out = sample(
        CFG,
        params,
        jnp.asarray(logits),
        jax.random.split(jax.random.PRNGKey(0), 2),
        counts=jnp.asarray(counts),
    )
    np.testing.assert_array_equal(np.asarray(out.tokens), want.argmax(-1))
    ref = want - np.log(np.exp(want - want.max(-1, keepdims=True)).sum(-1, keepdims=True))
    ref -= want.max(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out.token_logprobs), ref.max(-1), atol=1e-5)


def test_min_p_keeps_ids_within_the_ratio_of_the_best(rng):
    logits = rng.randn(2, V).astype(np.float32) * 2
    params = _params(temperature=[0.5, 1.0], min_p=[0.2, 0.0])
    got = np.asarray(filter_logits(CFG, params, jnp.asarray(logits)))
    scaled = logits[0] / 0.5
    probs = np.exp(scaled - scaled.max())
    keep = probs >= 0.2  # relative to the best id's probability (1 after the shift)
    assert 1 < keep.sum() < V  # the test has both kept and dropped ids
    np.testing.assert_array_equal(np.isfinite(got[0]), keep)
    np.testing.assert_allclose(got[0][keep], scaled[keep], rtol=1e-6)
    assert np.isfinite(got[1]).all()  # min_p = 0 is off


@pytest.mark.parametrize(
    "field,value",
    [
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("presence_penalty", 3.0),
        ("frequency_penalty", float("nan")),
        ("seed", -2),
    ],
)
def test_bad_penalty_values_name_the_field(field, value):
    with pytest.raises(InputError, match=field):
        _params(**{field: value})


def test_a_row_seed_gives_the_same_tokens_at_any_batch_position(checkpoints):
    engine = make_engine(checkpoints["qwen3"])
    tok = Tokenizer.from_dir(checkpoints["qwen3"])
    prompt = tok.encode("hello there")
    other = tok.encode("xyz")
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0, loop="while")
    alone = generate(engine, tok, [prompt], seed=[11], **kw)[0].tokens
    second = generate(engine, tok, [other, prompt, other], seed=[5, 11, 6], **kw)[1].tokens
    assert alone == second
    assert generate(engine, tok, [prompt], seed=[12], **kw)[0].tokens != alone
    # One shared seed: each prompt's stream depends on its index, not on the batch split.
    split = generate(engine, tok, [other, prompt], seed=3, batch_size=1, **kw)
    whole = generate(engine, tok, [other, prompt], seed=3, batch_size=2, **kw)
    assert [c.tokens for c in split] == [c.tokens for c in whole]


@pytest.fixture(scope="module")
def penalised_ckpt(checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("rep_penalty")
    shutil.copytree(checkpoints["llama"], path, dirs_exist_ok=True)
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "repetition_penalty": 1.3})
    )
    return str(path)


def test_repetition_penalty_from_generation_config_equals_transformers(penalised_ckpt):
    import transformers

    engine = make_engine(penalised_ckpt)
    tok = Tokenizer.from_dir(penalised_ckpt)
    prompt = [5, 17, 99, 3, 64, 12, 7, 88, 41, 17, 17]
    ours = generate(engine, tok, [prompt], max_new_tokens=24)[0]  # greedy + penalty: defaults
    model = transformers.AutoModelForCausalLM.from_pretrained(penalised_ckpt).eval()
    assert model.generation_config.repetition_penalty == 1.3
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=24, pad_token_id=0)
    ref = [int(t) for t in ref[0, len(prompt) :]]
    assert ours.tokens == ref
    plain = generate(engine, tok, [prompt], max_new_tokens=24, repetition_penalty=1.0)[0]
    assert plain.tokens != ours.tokens  # the penalty changes this model's greedy text


def test_generation_config_sampling_defaults(tmp_path):
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 9})
    )
    d = GenerationDefaults.from_dir(tmp_path)
    assert (d.temperature, d.top_p, d.top_k, d.max_new_tokens) == (0.7, 0.9, 50, 9)
    assert d.resolve("temperature", 0.1) == 0.1
    (tmp_path / "generation_config.json").write_text(json.dumps({"top_k": 5}))
    assert GenerationDefaults.from_dir(tmp_path).top_k == 1  # do_sample false: greedy
    (tmp_path / "generation_config.json").write_text(json.dumps({"repetition_penalty": "x"}))
    with pytest.raises(ConfigError, match="repetition_penalty"):
        GenerationDefaults.from_dir(tmp_path)


def test_counts_track_generated_ids_in_the_state(checkpoints):
    engine = make_engine(checkpoints["qwen3"])
    state = ef.create_state(engine.config, 1)
    ids = jnp.asarray([[5, 6, 7]], jnp.int32)
    state = ef.prefill(engine, state, ef.embed(engine, ids), np.array([3]))
    config, params = make_sampling_params(
        1, vocab_size=engine.config.output_vocab_size, temperature=0.0
    )
    state, res = loops.decode_while(
        engine, state, config, params, jax.random.PRNGKey(0), [6], eos_ids=(), max_new_tokens=6
    )
    want = np.bincount(np.asarray(res.tokens[0, :6]), minlength=engine.config.output_vocab_size)
    np.testing.assert_array_equal(np.asarray(state.io.counts[0]), want)
