"""Reduced vocabulary end to end: greedy parity with the full vocabulary when the argmax is kept,
ids mapped back, the reduce-vocab tool's output reloading (xla and onnxruntime), named errors."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.cli import main
from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.xla import XlaEngine
from edgellm_fn.errors import ConfigError, EngineError, InputError
from edgellm_fn.models.vocab import VOCAB_MAP_FILE, load_vocab_map, save_vocab_map
from edgellm_fn.runtime.vocab import reduce_logit_bias, to_full_ids

LIMITS = dict(max_batch_size=2, max_input_len=16, kv_capacity=32)
PROMPTS = [[1, 40, 41, 42, 43], [1, 70, 71]]
STEPS = 6


def _greedy(engine, tokenizer):
    return ef.generate(engine, tokenizer, PROMPTS, max_new_tokens=STEPS, top_k=1, num_logprobs=2)


@pytest.fixture(scope="module", params=["llama", "qwen2"])  # untied and tied embeddings
def family(request, checkpoints, tmp_path_factory):
    """``(ckpt, full engine, tokenizer, full greedy completions, map dir of their tokens)``."""
    ckpt = checkpoints[request.param]
    full = ef.load_engine(ckpt, **LIMITS)
    tok = ef.Tokenizer.from_dir(ckpt)
    want = _greedy(full, tok)
    # Every id the full model picked (plus specials and a few others): each step's argmax is kept.
    kept = {0, 1, 2, 3, 100} | {t for c in want for t in c.tokens}
    out = tmp_path_factory.mktemp(f"vocab_{request.param}")
    save_vocab_map(np.array(sorted(kept), np.int32), out)
    return ckpt, full, tok, want, out


def test_greedy_equals_full_vocab_greedy_when_the_argmax_is_kept(family):
    ckpt, full, tok, want, out = family
    reduced = ef.load_engine(ckpt, vocab_map=out, **LIMITS)
    ids = load_vocab_map(out, full.config.model)
    assert reduced.config.output_vocab_size == ids.size < full.config.model.vocab_size
    assert reduced.spec["logits"].shape[1] == ids.size
    got = _greedy(reduced, tok)
    assert [c.tokens for c in got] == [c.tokens for c in want]
    assert [c.text for c in got] == [c.text for c in want]
    for c in got:  # top ids are full ids of the kept set, the best one the sampled token
        for entry in c.logprobs:
            assert entry["top_logprobs"][0]["token_id"] == entry["token_id"]
            assert all(t["token_id"] in set(ids.tolist()) for t in entry["top_logprobs"])
    # The reduced logits are the kept columns of the full ones.
    x, lengths = ef.pad_prompts(PROMPTS, 8)
    rows = []
    for engine in (full, reduced):
        state = ef.create_state(engine.config, 2)
        state = ef.prefill(engine, state, ef.embed(engine, x), lengths)
        rows.append(np.asarray(state.io.logits))
    np.testing.assert_allclose(rows[1], rows[0][:, ids], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama"], indirect=True)
def test_sampled_columns_map_back_to_full_ids(family):
    ckpt, full, tok, _, _ = family
    # A map that drops the full model's choices: every token is still a kept full id.
    ids = np.array([2, 50, 51, 52, 60], np.int32)
    reduced = XlaEngine(
        ef.EngineConfig.create(full.config.model, reduced_vocab_size=5, **LIMITS),
        {**full.params, "lm_head": full.params.get("lm_head", full.params["embed"])[ids]},
        vocab_map=jnp.asarray(ids),
    )
    got = ef.generate(reduced, tok, PROMPTS, max_new_tokens=4, top_k=1, loop="while")
    for c in got:
        assert c.tokens and set(c.tokens) <= set(ids.tolist())
        assert c.text == tok.decode([t for t in c.tokens if t != 2])
    assert np.asarray(to_full_ids(jnp.asarray(ids), jnp.array([[0, 4], [1, 3]]))).tolist() == [
        [2, 60],
        [50, 52],
    ]


def test_logit_bias_moves_to_columns_and_refuses_dropped_ids():
    ids = jnp.array([2, 50, 51])
    assert reduce_logit_bias(ids, {"51": 3.0, 2: -1.0}, 2) == [{2: 3.0, 0: -1.0}] * 2
    assert reduce_logit_bias(None, {5: 1.0}, 1) == {5: 1.0}
    with pytest.raises(
        InputError,
        match=r"generate: logit_bias\[1\] id=7 \(expected an id of the reduced vocabulary, 3 ids in vocab_map\); this engine can never produce it",
    ):
        reduce_logit_bias(ids, [{}, {7: 1.0}], 2)


@pytest.mark.parametrize("family", ["llama"], indirect=True)
def test_a_config_and_map_that_disagree_are_refused(family):
    _, full, _, _, _ = family
    cfg = ef.EngineConfig.create(full.config.model, reduced_vocab_size=3, **LIMITS)
    head = full.params.get("lm_head", full.params["embed"])
    with pytest.raises(
        EngineError,
        match=r"xla provider: vocab_map shape=None \(expected \[3\] for reduced_vocab_size=3\); load the engine with load_engine\(..., vocab_map=DIR\)",
    ):
        XlaEngine(cfg, {**full.params, "lm_head": head[:3]})
    with pytest.raises(EngineError, match=r"vocab_map shape=\[2\] \(expected \[3\]"):
        XlaEngine(cfg, {**full.params, "lm_head": head[:3]}, vocab_map=jnp.array([1, 2]))
    with pytest.raises(
        EngineError,
        match=r"lm_head has 128 rows \(expected output_vocab_size=3\); slice it with models.vocab.reduce_params",
    ):
        XlaEngine(cfg, {**full.params, "lm_head": head}, vocab_map=jnp.array([0, 1, 2]))
    with pytest.raises(
        ConfigError, match=r"EngineConfig: reduced_vocab_size=129 \(expected <= vocab_size=128\)"
    ):
        ef.EngineConfig.create(full.config.model, reduced_vocab_size=129, **LIMITS)


def test_reduce_vocab_tool_output_reloads_and_runs(checkpoints, tmp_path, capsys):
    ckpt = checkpoints["qwen3"]
    req = tmp_path / "req.json"
    req.write_text(json.dumps({"requests": [{"messages": [{"role": "user", "content": "abcab"}]}]}))
    out = tmp_path / "reduced"
    args = ["reduce-vocab", "--model", ckpt, "--input-file", str(req), "--out", str(out)]
    assert main([*args, "--size", "12"]) == 0
    ids = load_vocab_map(out, ef.ModelConfig.from_file(ckpt))
    tok = ef.Tokenizer.from_dir(ckpt)
    # The specials (<pad> <s> </s>), then a, b, c and the chat template's characters.
    assert ids.size == 12 and {0, 1, 2} <= set(ids.tolist())
    assert {tok.encode(ch, add_special_tokens=False)[0] for ch in "abc"} <= set(ids.tolist())
    report = json.loads((out / "reduce_vocab.json").read_text())
    assert report["reduced_vocab_size"] == 12 and report["special_ids"] == [0, 1, 2]
    capsys.readouterr()
    gen = ["generate", "--model", ckpt, "--vocab-map", str(out), "--prompt", "abc", "--json"]
    limits = ["--max-batch", "1", "--max-input-len", "32", "--kv-capacity", "64"]
    assert main([*gen, *limits, "--max-new-tokens", "3"]) == 0
    response = json.loads(capsys.readouterr().out)
    (entry,) = response["responses"]
    assert entry["finish_reason"] in ("stop", "length")
    text = entry["output_text"]
    for piece in sorted({tok.decode([int(i)]) for i in ids}, key=len, reverse=True):
        text = text.replace(piece, "")
    assert text == ""  # the output decodes from kept ids only
    # Refusals: into the checkpoint, over an existing map, a size below the specials.
    assert main([*args[:5], "--out", ckpt, "--size", "12"]) == 2
    assert "expected a directory other than the checkpoint directory" in capsys.readouterr().err
    assert main([*args, "--size", "12"]) == 2
    assert "refusing to overwrite it" in capsys.readouterr().err
    assert main([*args[:5], "--out", str(tmp_path / "new"), "--size", "2"]) == 2
    assert "expected >= 3, the number of special and EOS ids" in capsys.readouterr().err
    assert not (tmp_path / "new" / VOCAB_MAP_FILE).exists()


@pytest.mark.parametrize("family", ["qwen2"], indirect=True)
def test_onnx_engine_outputs_reduced_logits_and_matches_xla(family, tmp_path):
    ckpt, _, tok, want, out = family
    engine_dir = build_engine(ckpt, tmp_path / "engine", "onnxruntime", 2, 16, 32, vocab_map=out)
    ort = ef.load_engine(engine_dir)
    ids = load_vocab_map(out, ort.config.model)
    assert np.asarray(ort.vocab_map).tolist() == ids.tolist()
    assert ort.spec["logits"].shape[1] == ids.size
    got = _greedy(ort, tok)
    assert [c.tokens for c in got] == [c.tokens for c in want]
    with pytest.raises(
        ConfigError,
        match=r"vocab_map=.* for the engine directory .* \(expected None: an engine's reduced vocabulary is fixed when it is built\)",
    ):
        ef.load_engine(engine_dir, vocab_map=out)
    save_vocab_map(ids[:-1], engine_dir / VOCAB_MAP_FILE)
    with pytest.raises(
        EngineError,
        match=rf"length={ids.size - 1} \(expected reduced_vocab_size={ids.size} from config.json\)",
    ):
        ef.load_engine(engine_dir)
    (engine_dir / VOCAB_MAP_FILE).unlink()
    with pytest.raises(ConfigError, match=r"vocab_map.safetensors: vocab map not found"):
        ef.load_engine(engine_dir)
