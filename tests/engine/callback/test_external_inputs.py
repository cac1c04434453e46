"""External weights (one built ONNX engine, several weight sets) and declared extra inputs
(``lm_head_weight``), each validated by name before it reaches a state."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgellm_fn import EngineConfig, XlaEngine, create_state, load_checkpoint
from edgellm_fn.engine.callback.build import build_engine
from edgellm_fn.engine.callback.onnxruntime import load_onnxruntime_engine
from edgellm_fn.engine.inputs import check_inputs, load_external_weights
from edgellm_fn.errors import ConfigError, EngineError
from edgellm_fn.models.external import LM_HEAD_INPUT, engine_weights, lm_head_input
from edgellm_fn.models.safetensors_io import save_file

from ...conftest import make_hf_model, write_char_tokenizer
from ...helpers import greedy
from .helpers import LIMITS, PROMPTS

STEPS = 4


def _xla(ckpt, cfg) -> XlaEngine:
    _, params = load_checkpoint(ckpt)
    return XlaEngine(cfg, params)


@pytest.fixture(scope="module")
def weights_engine(checkpoints, tmp_path_factory):
    """An onnxruntime engine built ONCE with external weights, and two llama checkpoints of its
    shape (the shared one, seed 0, and another random one, seed 1)."""
    other = tmp_path_factory.mktemp("ckpt_llama_seed1")
    make_hf_model("llama", seed=1).save_pretrained(other)
    write_char_tokenizer(other)
    engine_dir = tmp_path_factory.mktemp("onnx_external")
    build_engine(checkpoints["llama"], engine_dir, "onnxruntime", **LIMITS, external_weights=True)
    return load_onnxruntime_engine(engine_dir), [checkpoints["llama"], str(other)], engine_dir


def test_one_built_engine_serves_two_weight_sets_as_the_xla_provider(weights_engine):
    ort, ckpts, engine_dir = weights_engine
    model = onnx.load(str(engine_dir / "model.onnx"), load_external_data=False)
    assert not model.graph.initializer or all(
        not t.name.startswith(("layers.", "lm_head", "final_norm")) for t in model.graph.initializer
    )
    assert not (engine_dir / "model.onnx.data").exists() or (
        (engine_dir / "model.onnx.data").stat().st_size < 4096
    )
    xla_cfg = EngineConfig.create(
        ort.config.model, max_batch_size=2, max_input_len=16, kv_capacity=32
    )
    runs = []
    for ckpt in ckpts:
        weights, embedding = load_external_weights(ort.config, ckpt)
        got = greedy(ort.with_embedding(embedding), PROMPTS, STEPS, weights=weights)
        want = greedy(_xla(ckpt, xla_cfg), PROMPTS, STEPS)
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=2e-4, atol=2e-4)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
        runs.append(got["logits"])
    assert not np.allclose(runs[0], runs[1], atol=1e-2)  # two different weight sets really ran


def test_bad_weight_sets_are_refused_by_name(weights_engine, checkpoints, tmp_path):
    ort, ckpts, _ = weights_engine
    cfg = ort.config
    good, embedding = load_external_weights(cfg, ckpts[0])
    with pytest.raises(
        EngineError,
        match=r"onnxruntime provider: embedding float32 \[128, 63\] \(expected float32 \[128, 64\]\)",
    ):
        ort.with_embedding(embedding[:, :63])
    with pytest.raises(
        EngineError,
        match=r"create_state: weights: missing weight input 'layers.0.attn_norm' \(expected float32 \[64\]\); pass every one to create_state \(SharedResources.weights\)",
    ):
        create_state(cfg, 1)
    missing = {k: v for k, v in good.items() if k != "lm_head"}
    with pytest.raises(
        EngineError, match=r"missing weight input 'lm_head' \(expected float32 \[64, 128\]\)"
    ):
        create_state(cfg, 1, weights=missing)
    with pytest.raises(
        EngineError,
        match=r"weight input 'layers.9.wqkv' is not in the engine spec \(expected one of .*\); the set was made for another model or build",
    ):
        create_state(cfg, 1, weights={**good, "layers.9.wqkv": good["layers.0.wqkv"]})
    with pytest.raises(
        EngineError,
        match=r"weight input 'final_norm' shape=\[63\] \(expected \[64\]\); the set was made for a model of another shape",
    ):
        create_state(cfg, 1, weights={**good, "final_norm": good["final_norm"][:63]})
    f16 = {**good, "final_norm": good["final_norm"].astype(np.float16)}
    with pytest.raises(
        EngineError, match=r"weight input 'final_norm' dtype=float16 \(expected float32\); cast it"
    ):
        create_state(cfg, 1, weights=f16)
    bad = {**good, "layers.1.wo": good["layers.1.wo"].copy()}
    bad["layers.1.wo"][0, 0] = np.nan
    with pytest.raises(
        EngineError,
        match=r"weight input 'layers.1.wo' holds NaN or inf \(expected finite values\); pass allow_non_finite=True",
    ):
        check_inputs(ort.spec, "weight", bad, "here")
    assert list(check_inputs(ort.spec, "weight", bad, "here", allow_non_finite=True)) == list(good)
    # A checkpoint of another shape (qwen2: q/k/v biases) and a file of the engine layout.
    with pytest.raises(
        EngineError,
        match=r"load_external_weights\(.*ckpt_qwen2.*\): weight input 'layers.0.bqkv' is not in the engine spec",
    ):
        load_external_weights(cfg, checkpoints["qwen2"])
    save_file(good, tmp_path / "set.safetensors")
    loaded, none = load_external_weights(cfg, tmp_path / "set.safetensors")
    assert none is None
    assert all(np.array_equal(loaded[k], good[k]) for k in good)
    with pytest.raises(
        EngineError,
        match=r"builder_config.external_weights=False \(expected True\); the engine holds its own weights",
    ):
        load_external_weights(EngineConfig.create(cfg.model), ckpts[0])
    with pytest.raises(
        EngineError, match=r"xla provider: external_weights=True \(expected False\)"
    ):
        _xla(ckpts[0], cfg)


@pytest.fixture(scope="module")
def head_engines(checkpoints, tmp_path_factory):
    """qwen2 (tied embeddings) built with the declared extra input ``lm_head_weight``, on both
    providers, plus its params."""
    ckpt = checkpoints["qwen2"]
    engine_dir = tmp_path_factory.mktemp("onnx_extra")
    build_engine(ckpt, engine_dir, "onnxruntime", **LIMITS, extra_inputs=(LM_HEAD_INPUT,))
    ort = load_onnxruntime_engine(engine_dir)
    _, params = load_checkpoint(ckpt)
    return ort, XlaEngine(ort.config, params), params


def test_an_extra_input_lm_head_runs_on_both_providers(head_engines):
    ort, xla, params = head_engines
    assert ort.spec[LM_HEAD_INPUT].kind == "extra"
    assert [b.name for b in ort.spec.of_kind("extra")] == [LM_HEAD_INPUT]
    plain_cfg = EngineConfig.create(
        ort.config.model, max_batch_size=2, max_input_len=16, kv_capacity=32
    )
    base = greedy(XlaEngine(plain_cfg, params), PROMPTS, STEPS)
    own = {LM_HEAD_INPUT: lm_head_input(params)}
    for engine in (ort, xla):
        got = greedy(engine, PROMPTS, STEPS, extra=own)
        np.testing.assert_allclose(got["logits"], base["logits"], rtol=2e-4, atol=2e-4)
    other = {LM_HEAD_INPUT: np.random.RandomState(3).normal(0, 0.2, (128, 64)).astype(np.float32)}
    swapped = [greedy(e, PROMPTS, STEPS, extra=other)["logits"] for e in (ort, xla)]
    np.testing.assert_allclose(swapped[0], swapped[1], rtol=2e-4, atol=2e-4)
    assert not np.allclose(swapped[0], base["logits"], atol=1e-2)


def test_a_missing_or_ill_shaped_extra_input_is_refused_by_name(head_engines):
    ort, xla, params = head_engines
    for engine in (ort, xla):
        with pytest.raises(
            EngineError,
            match=r"create_state: extra: missing extra input 'lm_head_weight' \(expected float32 \[128, 64\]\); pass every one to create_state \(SharedResources.extra\)",
        ):
            create_state(engine.config, 1)
        with pytest.raises(
            EngineError,
            match=r"extra input 'lm_head_weight' shape=\[64, 128\] \(expected \[128, 64\]\)",
        ):
            create_state(engine.config, 1, extra={LM_HEAD_INPUT: lm_head_input(params).T})
        with pytest.raises(EngineError, match=r"extra input 'lm_head' is not in the engine spec"):
            create_state(
                engine.config, 1, extra={LM_HEAD_INPUT: lm_head_input(params), "lm_head": 0}
            )
    with pytest.raises(
        ConfigError,
        match=r"extra_inputs entry 'codebook' \(expected one of \['lm_head_weight'\]\); an extra input must be declared in models/external.py EXTRA_INPUTS",
    ):
        EngineConfig.create(ort.config.model, extra_inputs=("codebook",)).model and XlaEngine(
            EngineConfig.create(ort.config.model, extra_inputs=("codebook",)), params
        ).spec
    with pytest.raises(ConfigError, match=r"extra_inputs=\['a', 'a'\] \(expected each name once\)"):
        EngineConfig.create(ort.config.model, extra_inputs=("a", "a"))


def test_engine_weights_cover_every_initializer_of_a_plain_export(checkpoints):
    from edgellm_fn.models.onnx.export import build_model

    for family in ("llama", "qwen2", "qwen3"):
        model_cfg, params = load_checkpoint(checkpoints[family])
        cfg = EngineConfig.create(model_cfg, max_batch_size=1, max_input_len=8, kv_capacity=8)
        inits = {
            t.name: onnx.numpy_helper.to_array(t)
            for t in build_model(cfg, params).graph.initializer
        }
        weights = engine_weights(cfg, params)
        assert set(weights) <= set(inits)
        for name, w in weights.items():
            np.testing.assert_array_equal(inits[name], w)
