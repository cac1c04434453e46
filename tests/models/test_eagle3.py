"""EAGLE3 draft checkpoints, the spec-decode bundle and the engine contract: every mismatch
raises a named error before anything runs or is donated."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.dims import verify_dims
from edgellm_fn.engine.spec import build_draft_spec, build_spec_base_spec
from edgellm_fn.engine.xla_spec import load_spec_engines
from edgellm_fn.models.eagle3 import Eagle3Config, SpecDecodeConfig
from edgellm_fn.models.eagle3_loader import load_eagle3_draft, random_eagle3_checkpoint
from edgellm_fn.models.safetensors_io import load_file, save_file
from edgellm_fn.runtime import spec_decode as sd

from ..runtime.spec_helpers import TREES, spec_engines


@pytest.fixture(scope="module")
def base_dir(checkpoints):
    return checkpoints["llama"]


@pytest.fixture(scope="module")
def base_cfg(base_dir):
    return ef.ModelConfig.from_file(base_dir)


def _draft(tmp_path, base_cfg, name="draft", **kw):
    kw.setdefault("aux_layer_ids", (0, 1, 2))
    return random_eagle3_checkpoint(tmp_path / name, base_cfg, **kw)


def _read(path) -> dict[str, np.ndarray]:
    """The draft's tensors as copies (the reader memory-maps the file we then rewrite)."""
    return {k: np.array(v) for k, v in load_file(path / "model.safetensors").items()}


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_a_community_layout_draft_loads_with_its_reduced_vocabulary(tmp_path, base_cfg):
    path = _draft(tmp_path, base_cfg, draft_vocab_size=96, embed=True)
    cfg, params, aux = load_eagle3_draft(path, base_cfg)
    assert aux == (0, 1, 2) and cfg.draft_vocab_size == 96
    assert params["wqkv"].shape == (cfg.q_size + 2 * cfg.kv_size, 2 * cfg.hidden_size)
    assert params["fc"].shape == (64, 3 * 64) and params["embed"].shape == (128, 64)
    d2t = _read(path)["d2t"]
    np.testing.assert_array_equal(np.asarray(params["draft_to_target"]), np.arange(96) + d2t)
    # "layers.0." names behind a "model." prefix load too (another release layout).
    tensors = _read(path)
    renamed = {
        ("model." + k.replace("midlayer.", "layers.0.") if k != "lm_head.weight" else k): v
        for k, v in tensors.items()
    }
    save_file(renamed, path / "model.safetensors")
    _, again, _ = load_eagle3_draft(path, base_cfg)
    np.testing.assert_array_equal(np.asarray(again["wqkv"]), np.asarray(params["wqkv"]))


def test_a_draft_for_another_hidden_size_is_refused(tmp_path, base_cfg, base_dir):
    path = _draft(tmp_path, base_cfg)
    _edit_config(path, target_hidden_size=96)
    with pytest.raises(
        ef.ConfigError, match=r"target_hidden_size=96 \(expected the base's hidden_size=64\)"
    ):
        load_spec_engines(base_dir, path)
    # Without its own embedding a draft must share the base's hidden size.
    _edit_config(
        path, target_hidden_size=64, hidden_size=32, num_attention_heads=2, num_key_value_heads=1
    )
    with pytest.raises(ef.ConfigError, match=r"no embed_tokens and hidden_size=32"):
        load_eagle3_draft(path, base_cfg)


def test_a_draft_for_another_vocabulary_is_refused(tmp_path, base_cfg, base_dir):
    path = _draft(tmp_path, base_cfg)
    _edit_config(path, vocab_size=256)
    with pytest.raises(
        ef.ConfigError, match=r"vocab_size=256 \(expected the base's vocab_size=128\)"
    ):
        load_eagle3_draft(path, base_cfg)
    _edit_config(path, vocab_size=128, draft_vocab_size=200)
    with pytest.raises(
        ef.ConfigError, match=r"draft_vocab_size=200 \(expected <= vocab_size=128\)"
    ):
        load_eagle3_draft(path, base_cfg)


def test_a_draft_tensor_of_the_wrong_shape_is_refused(tmp_path, base_cfg):
    path = _draft(tmp_path, base_cfg)
    tensors = _read(path)
    tensors["fc.weight"] = np.zeros((64, 128), np.float32)  # 2H inputs instead of 3H
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(
        ef.CheckpointError, match=r"tensor 'fc.weight' has shape \[64, 128\] \(expected \[64, 192\]"
    ):
        load_eagle3_draft(path, base_cfg)
    del tensors["fc.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ef.CheckpointError, match=r"missing tensor 'fc.weight'"):
        load_eagle3_draft(path, base_cfg)


def test_a_reduced_vocabulary_needs_d2t_inside_the_target_vocabulary(tmp_path, base_cfg):
    path = _draft(tmp_path, base_cfg, draft_vocab_size=96)
    tensors = _read(path)
    tensors["d2t"] = tensors["d2t"] + 200
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ef.CheckpointError, match=r"d2t maps draft ids to .* \(expected target ids"):
        load_eagle3_draft(path, base_cfg)
    del tensors["d2t"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ef.CheckpointError, match=r"missing tensor 'd2t'"):
        load_eagle3_draft(path, base_cfg)


def test_default_feature_layers_outside_a_small_base_are_refused(tmp_path, base_cfg):
    path = random_eagle3_checkpoint(tmp_path / "d", base_cfg)  # default (2, L//2, L-3) = (2, 1, -1)
    with pytest.raises(ef.ConfigError, match=r"eagle_aux_hidden_state_layer_ids=\[2, 1, -1\]"):
        load_eagle3_draft(path, base_cfg)


@pytest.mark.parametrize(
    "raw, match",
    [
        (dict(architectures=["LlamaForCausalLM"]), r"architectures=\['LlamaForCausalLM'\]"),
        (dict(num_hidden_layers=2), r"num_hidden_layers=2 \(expected 1\)"),
        (dict(eagle_config={"use_aux_hidden_state": False}), r"use_aux_hidden_state=False"),
        (dict(eagle_aux_hidden_state_layer_ids=[1, "x"]), r"eagle_aux_hidden_state_layer_ids="),
    ],
)
def test_draft_config_fields_are_parsed_strictly(raw, match):
    good = dict(
        architectures=["LlamaForCausalLMEagle3"],
        hidden_size=64,
        intermediate_size=112,
        num_attention_heads=4,
        vocab_size=128,
    )
    Eagle3Config.from_dict(good)
    with pytest.raises(ef.ConfigError, match=match):
        Eagle3Config.from_dict({**good, **raw})


def test_tree_limits_are_checked_when_the_bundle_is_built(base_dir):
    base, _ = spec_engines(base_dir, "oracle", TREES["chain"])
    b = base.bundle
    with pytest.raises(
        ef.ConfigError, match=r"verify_size=20 \(expected <= max_verify_tree_size=16\)"
    ):
        SpecDecodeConfig(
            base=b.base,
            draft=b.draft,
            tree_topk=4,
            tree_steps=3,
            verify_size=20,
            max_verify_tree_size=16,
        )
    with pytest.raises(ef.ConfigError, match=r"verify_size=9 \(expected <= 1 \+ 4"):
        SpecDecodeConfig(
            base=b.base,
            draft=b.draft,
            tree_topk=1,
            tree_steps=4,
            verify_size=9,
            max_verify_tree_size=16,
        )
    with pytest.raises(ef.ConfigError, match=r"max_verify_tree_size=100 \(expected <= kv capacity"):
        SpecDecodeConfig(
            base=b.base,
            draft=b.draft,
            tree_topk=4,
            tree_steps=3,
            verify_size=9,
            max_verify_tree_size=100,
        )


def test_the_engine_contracts_of_base_and_draft(base_dir):
    base, draft = spec_engines(base_dir, "oracle", TREES["wide"])
    b = base.bundle
    spec = build_spec_base_spec(b)
    dims = verify_dims(b.base, 3, 12)
    assert spec["hidden_states"].resolve(dims) == (36, 3 * 64)
    assert spec["logits"].resolve(dims) == (36, 128)
    assert spec["attention_mask"].resolve(dims) == (3, 12, 1)
    assert spec["attention_pos_id"].resolve(dims) == (3, 12)
    # Profile ranges cover the tree inputs (what an engine builder declares).
    (p0, p1) = spec.profile_ranges(spec["attention_mask"])
    assert p0 == ((1, 1, 1), (3, 1, 1)) and p1 == ((1, 1, 1), (3, 16, 1))
    dspec = build_draft_spec(b)
    names = {t.name for t in dspec.inputs()}
    assert {"base_hidden_states", "draft_hidden_states_in", "attention_mask"} <= names
    assert {t.name for t in dspec.outputs()} >= {"logits", "draft_hidden_states_out"}
    assert ("present_key_0", "past_key_0") in dspec.aliases


def test_a_bad_tree_mask_is_refused_before_the_state_is_donated(base_dir):
    base, draft = spec_engines(base_dir, "oracle", TREES["wide"])
    state = sd.create_spec_state(base.bundle, 3)
    state = sd.spec_prefill(base, draft, state, np.ones((3, 4), np.int32), np.array([4, 2, 3]))
    tokens = np.zeros((3, 12), np.int32)
    pos = np.zeros((3, 12), np.int32)
    with pytest.raises(ef.InputError, match=r"attention_mask has shape \[3, 12, 2\].*\[3, 12, 1\]"):
        sd.verify_tree(base, state, tokens, tokens, np.zeros((3, 12, 2), np.int32), pos)
    with pytest.raises(ef.InputError, match=r"tree_tokens has shape \[3, 20\].*verify_size=12"):
        big = np.zeros((3, 20), np.int32)
        sd.verify_tree(base, state, big, big, np.zeros((3, 20, 1), np.int32), big)
    # The engine contract itself refuses a bad mask binding at trace time (EngineError).
    from edgellm_fn.engine.tensor_map import build_tensor_map_for_spec_decode

    tensors = build_tensor_map_for_spec_decode(state.io.spec.verify, state.res)
    tensors["attention_mask"] = jnp.zeros((3, 12, 2), jnp.int32)
    with pytest.raises(ef.EngineError, match=r"attention_mask has shape \[3, 12, 2\]"):
        base.prepare(1, verify_dims(base.config, 3, 12), tensors)
    # The state was not donated: the proposed tree still verifies and accepts.
    state = sd.propose(draft, state)
    state = sd.verify_tree(base, state)
    state, toks, n = sd.accept(base, draft, state)
    assert (np.asarray(n) >= 1).all()


def test_mismatched_engines_and_states_are_refused(base_dir):
    base, draft = spec_engines(base_dir, "oracle", TREES["wide"])
    other_base, other_draft = spec_engines(base_dir, "oracle", TREES["deep"])
    state = sd.create_spec_state(base.bundle, 3)
    ids, lengths = np.ones((3, 4), np.int32), np.array([4, 2, 3])
    with pytest.raises(ef.InputError, match=r"different SpecDecodeConfigs"):
        sd.spec_prefill(base, other_draft, state, ids, lengths)
    with pytest.raises(ef.InputError, match=r"state was made for verify_size=12 \(expected 11"):
        sd.spec_prefill(other_base, other_draft, state, ids, lengths)
    vanilla = ef.create_state(base.config, 3)
    with pytest.raises(ef.InputError, match=r"no spec-decode buffers"):
        sd.spec_prefill(base, draft, vanilla, ids, lengths)
    with pytest.raises(ef.InputError, match=r"lengths=\[4, 2, 5\]"):
        sd.spec_prefill(base, draft, state, ids, np.array([4, 2, 5]))
    with pytest.raises(ef.InputError, match=r"batch=4 \(expected 1..max_batch_size=3\)"):
        sd.create_spec_state(base.bundle, 4)
