"""Strict config.json parsing: every supported field, and a clear ConfigError for bad ones."""

from __future__ import annotations

import json

import pytest

import edgellm_fn as ef
from edgellm_fn.config import ModelConfig

BASE = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 100,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "max_position_embeddings": 512,
    "torch_dtype": "bfloat16",
    "eos_token_id": [2, 7],
}


def parse(**changes):
    raw = {**BASE, **changes}
    return ModelConfig.from_dict({k: v for k, v in raw.items() if v is not ...})


def test_llama_fields():
    cfg = parse()
    assert (cfg.head_dim, cfg.dtype, cfg.eos_token_ids) == (16, "bfloat16", (2, 7))
    assert cfg.rope.theta == 500000.0 and cfg.rope.rope_type == "default"
    assert not cfg.qkv_bias and not cfg.qk_norm and cfg.sliding_windows == (0, 0)
    hash(ef.EngineConfig.create(cfg))  # static jit argument


def test_family_specific_fields():
    qwen2 = parse(architectures=["Qwen2ForCausalLM"], model_type="qwen2")
    assert qwen2.qkv_bias and not qwen2.o_bias
    qwen3 = parse(architectures=["Qwen3ForCausalLM"], model_type="qwen3", head_dim=40)
    assert qwen3.qk_norm and qwen3.head_dim == 40 and qwen3.q_size == 160
    sliding = parse(
        architectures=["Qwen2ForCausalLM"],
        model_type="qwen2",
        use_sliding_window=True,
        sliding_window=16,
        max_window_layers=1,
    )
    assert sliding.sliding_windows == (0, 16)


def test_rope_parameters_and_legacy_rope_scaling_agree():
    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    legacy = parse(rope_scaling=scaling)
    modern = parse(rope_theta=..., rope_parameters={**scaling, "rope_theta": 500000.0})
    assert legacy.rope == modern.rope and legacy.rope.factor == 8.0
    assert parse(partial_rotary_factor=0.5).rope.rotary_dim == 8


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            dict(architectures=["GPT2LMHeadModel"]),
            r"architectures=\['GPT2LMHeadModel'\] \(expected one of",
        ),
        (dict(architectures=..., model_type="gpt2"), r"missing required field 'architectures'"),
        (dict(model_type="qwen2"), r"model_type='qwen2' contradicts architectures"),
        (dict(hidden_size=...), r"missing required field 'hidden_size'"),
        (dict(vocab_size="100"), r"vocab_size='100' \(expected int\)"),
        (dict(num_hidden_layers=0), r"num_hidden_layers=0 \(expected an integer >= 1\)"),
        (dict(num_key_value_heads=3), r"num_key_value_heads=3 \(expected a divisor of"),
        (dict(hidden_act="swish2"), r"hidden_act='swish2' \(expected one of"),
        (dict(torch_dtype="int8"), r"dtype='int8' \(expected one of"),
        (dict(rope_scaling={"rope_type": "ntk"}), r"rope_type='ntk' \(expected one of"),
        (
            dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
            r"missing required field 'low_freq_factor'",
        ),
        (dict(rope_scaling={"rope_type": "linear"}), r"missing required field 'factor'"),
        (dict(partial_rotary_factor=1.5), r"partial_rotary_factor=1.5 \(expected 0 < value <= 1\)"),
        (dict(eos_token_id="eos"), r"eos_token_id='eos' \(expected an int or a list of ints\)"),
    ],
)
def test_bad_model_fields_name_the_field(changes, match):
    with pytest.raises(ef.ConfigError, match=match):
        parse(**changes)


def test_engine_limits_are_checked():
    cfg = parse()
    with pytest.raises(
        ef.ConfigError, match=r"max_input_len=512 \(expected <= max_kv_cache_capacity=256\)"
    ):
        ef.EngineConfig.create(cfg, max_input_len=512, kv_capacity=256)
    with pytest.raises(ef.ConfigError, match=r"max_batch_size=0 \(expected an integer >= 1\)"):
        ef.EngineConfig.create(cfg, max_batch_size=0)
    engine_json = {**BASE, **ef.EngineConfig.create(cfg).to_dict()}
    assert ef.EngineConfig.from_dict(engine_json).kv_capacity == 256
    with pytest.raises(ef.ConfigError, match=r"missing required field 'builder_config'"):
        ef.EngineConfig.from_dict(BASE)
    bad = {**engine_json, "builder_config": {"max_batch_size": 1, "max_input_len": 8}}
    with pytest.raises(ef.ConfigError, match=r"missing required field 'max_kv_cache_capacity'"):
        ef.EngineConfig.from_dict(bad)


def test_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(ef.ConfigError, match=r"config.json: file not found"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ef.ConfigError, match=r"config.json: invalid JSON at line 1"):
        ModelConfig.from_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ef.ConfigError, match=r"expected a JSON object, got list"):
        ModelConfig.from_file(tmp_path)
