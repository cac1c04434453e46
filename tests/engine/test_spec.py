"""EngineSpec (the binding contract), InferenceDims recipes and tensor-map validation."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

import edgellm_fn as ef
from edgellm_fn.dims import verify_dims
from edgellm_fn.engine.tensor_map import build_tensor_map

from ..helpers import make_engine


def test_inference_dims_fields_are_pinned():
    # Adding a field must update every recipe (they have no defaults).
    assert [f.name for f in dataclasses.fields(ef.InferenceDims)] == [
        "batch",
        "seq_len",
        "kv_len",
        "select_len",
        "attn_mask_seq_len",
        "rope_batch",
        "packed_mask_len",
        "start_index_len",
        "spec_verify_phase_len",
    ]


def test_recipes_follow_upstream(checkpoints):
    cfg = make_engine(checkpoints["llama"]).config
    assert ef.prefill_dims(cfg, 2, 9, cache_empty=True).start_index_len == 0
    assert ef.prefill_dims(cfg, 2, 9, cache_empty=False).start_index_len == 2
    d = ef.decode_dims(cfg, 3)
    assert (d.seq_len, d.kv_len, d.select_len, d.start_index_len) == (1, 64, 1, 3)
    v = verify_dims(cfg, 1, 40)
    assert (v.select_len, v.packed_mask_len, v.spec_verify_phase_len) == (40, 2, 40)


def test_spec_lists_the_contract(checkpoints):
    spec = make_engine(checkpoints["qwen3"]).spec
    dims = ef.decode_dims(make_engine(checkpoints["qwen3"]).config, 2)
    assert spec["past_key_1"].resolve(dims) == (2, 1, 64, 24)
    assert spec["logits"].resolve(dims) == (2, 128)
    assert spec["rope_rotary_cos_sin"].resolve(dims) == (1, 64, 24)
    assert ("present_value_0", "past_value_0") in spec.aliases
    assert [p.seq_len for p in spec.profiles] == [(1, 32), (1, 1)]


@pytest.fixture(scope="module")
def prepared_inputs(checkpoints):
    engine = make_engine(checkpoints["llama"])
    state = ef.create_state(engine.config, 2)
    x = ef.embed(engine, np.ones((2, 1), np.int32))
    tensors = build_tensor_map(state.io, state.res, inputs_embeds=x, start_index=state.kv.lengths)
    return engine, ef.decode_dims(engine.config, 2), tensors


def test_valid_map_passes(prepared_inputs):
    engine, dims, tensors = prepared_inputs
    prepared = engine.prepare(1, dims, tensors)
    assert set(prepared.tensors) == {b.name for b in engine.spec.inputs()}


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda t: t.pop("past_value_1"),
            r"missing input binding 'past_value_1' \(expected float32 \[2, 2, 64, 16\]\)",
        ),
        (lambda t: t.update(extra=jnp.zeros(1)), r"unknown binding 'extra'"),
        (
            lambda t: t.update(context_lengths=jnp.zeros(3, jnp.int32)),
            r"context_lengths has shape \[3\] \(expected \[2\] for profile 1\)",
        ),
        (
            lambda t: t.update(last_token_ids=jnp.zeros((2, 1), jnp.float32)),
            r"last_token_ids has dtype float32 \(expected int32\)",
        ),
    ],
)
def test_bad_map_names_the_binding(prepared_inputs, edit, match):
    engine, dims, tensors = prepared_inputs
    tensors = dict(tensors)
    edit(tensors)
    with pytest.raises(ef.EngineError, match=match):
        engine.prepare(1, dims, tensors)


def test_dims_outside_the_profile(prepared_inputs):
    engine, dims, tensors = prepared_inputs
    with pytest.raises(ef.EngineError, match=r"dims.seq_len=2 \(expected 1..1 in profile 1\)"):
        engine.prepare(1, dataclasses.replace(dims, seq_len=2), tensors)
    with pytest.raises(ef.EngineError, match=r"profile=2 \(expected 0..1\)"):
        engine.prepare(2, dims, tensors)
    with pytest.raises(ef.EngineError, match=r"dims.batch=0 \(expected >= 1\)"):
        engine.prepare(1, dataclasses.replace(dims, batch=0), tensors)


def test_spec_owns_static_dims_and_profile_ranges(checkpoints):
    cfg = make_engine(checkpoints["llama"]).config  # batch 4, max_input_len 32, kv 64
    spec = ef.build_llm_spec(cfg, max_decode_len=3)
    assert dict(spec.static_dims) == {"kv_len": 64, "rope_batch": 1}
    assert spec.built_shape(spec["past_key_0"]) == (-1, 2, 64, 16)
    assert spec.built_shape(spec["rope_rotary_cos_sin"]) == (1, 64, 16)
    assert not spec.is_dynamic(spec["rope_rotary_cos_sin"])
    assert spec.profile_ranges(spec["kvcache_start_index"]) == (((0,), (4,)), ((1,), (4,)))
    assert spec.profile_ranges(spec["logits"]) == (((1, 128), (4, 128)), ((1, 128), (12, 128)))
    assert spec.profile_ranges(spec["inputs_embeds"]) == (
        ((1, 1, 64), (4, 32, 64)),
        ((1, 1, 64), (4, 3, 64)),
    )
    with pytest.raises(ef.EngineError, match=r"Profile: field='kv_len' \(expected batch"):
        spec.profiles[0].range("kv_len")
