"""Strict config.json parsing: every supported field, and a clear ConfigError for bad ones."""

from __future__ import annotations

import json

import pytest

import edgellm_fn as ef
from edgellm_fn.config import ModelConfig
from edgellm_fn.config.defaults import DEFAULTS

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
        (
            dict(eos_token_id="eos"),
            r"eos_token_id='eos' \(expected an int or a list of ints, each >= 0\)",
        ),
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
    assert ef.EngineConfig.from_dict(engine_json).kv_capacity == DEFAULTS["kv_capacity"]
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


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(rope_theta=0), r"rope_scaling: rope_theta=0 \(expected a number > 0\)"),
        (dict(rope_theta=-5.0), r"rope_theta=-5.0 \(expected a number > 0\)"),
        (dict(rms_norm_eps=float("nan")), r"rms_norm_eps=nan \(expected a finite number\); NaN"),
        (dict(rms_norm_eps=float("inf")), r"rms_norm_eps=inf \(expected a finite number\)"),
        (dict(rms_norm_eps=10**400), r"rms_norm_eps=.* \(expected a finite number\)"),
        (
            dict(rope_scaling={"rope_type": "linear", "factor": float("nan")}),
            r"rope_scaling: factor=nan \(expected a finite number\)",
        ),
        (
            dict(
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": float("inf"),
                    "high_freq_factor": 4.0,
                }
            ),
            r"low_freq_factor=inf \(expected a finite number\)",
        ),
        (
            dict(
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 0.0,
                    "high_freq_factor": 4.0,
                }
            ),
            r"low_freq_factor=0.0 \(expected a number > 0\)",
        ),
        (
            dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": float("nan")}),
            r"beta_fast=nan \(expected a finite number\)",
        ),
        (
            dict(
                partial_rotary_factor=1.0,
                rope_scaling={
                    "rope_type": "longrope",
                    "short_factor": [1.0] * 7 + [float("nan")],
                    "long_factor": [1.0] * 8,
                },
            ),
            r"short_factor\[7\]=nan \(expected a finite number\)",
        ),
        (
            dict(
                rope_scaling={
                    "rope_type": "longrope",
                    "short_factor": ["a"] * 8,
                    "long_factor": [1.0] * 8,
                }
            ),
            r"short_factor\[0\]='a' \(expected float\)",
        ),
        (dict(rope_scaling=[1, 2]), r"rope_scaling: expected a JSON object, got list"),
        (dict(rope_scaling="yarn"), r"rope_scaling: expected a JSON object, got str"),
        (dict(rope_scaling={"rope_type": ["x"]}), r"rope_type=\['x'\] \(expected one of"),
        (
            dict(architectures=[["LlamaForCausalLM"]]),
            r"architectures=\[\['LlamaForCausalLM'\]\] \(expected one of",
        ),
        (dict(torch_dtype=["bf16"]), r"dtype=\['bf16'\] \(expected one of"),
        (dict(eos_token_id=[True]), r"eos_token_id=\[True\] \(expected an int or a list of ints"),
        (
            dict(bos_token_id=-1),
            r"bos_token_id=-1 \(expected an int or a list of ints, each >= 0\)",
        ),
        (dict(max_position_embeddings="512"), r"max_position_embeddings='512' \(expected int\)"),
    ],
)
def test_non_finite_and_non_positive_numbers_name_the_field(changes, match):
    with pytest.raises(ef.ConfigError, match=match):
        parse(**changes)


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("num_hidden_layers", 10**7, 1024),
        ("hidden_size", 1 << 20, 1 << 16),
        ("vocab_size", 10**12, 1 << 24),
        ("intermediate_size", 10**9, 1 << 20),
        ("num_attention_heads", 4096, 1024),
        ("head_dim", 1 << 15, 1024),
        ("max_position_embeddings", 10**10, 1 << 24),
    ],
)
def test_sanity_bounds_name_the_field_and_the_limit(field, value, limit):
    with pytest.raises(
        ef.ConfigError,
        match=rf"config.json: {field}={value} \(expected <= {limit}, the sanity bound config.LIMITS\['{field}'\]\)",
    ):
        parse(**{field: value})


def test_deployment_limits_are_bounded():
    with pytest.raises(
        ef.ConfigError,
        match=r"builder_config: max_batch_size=100000000 \(expected <= 65536, the sanity bound",
    ):
        ef.EngineConfig.create(parse(), max_batch_size=10**8, max_state_bytes=1 << 62)


def test_kv_cache_bytes_and_the_memory_bound():
    cfg = parse()  # 2 layers, 2 kv heads, head_dim 16, bfloat16
    ecfg = ef.EngineConfig.create(cfg, max_batch_size=4, max_input_len=64, kv_capacity=256)
    assert ecfg.kv_cache_bytes() == 2 * 2 * 4 * 2 * 256 * 16 * 2
    assert ecfg.kv_cache_bytes(1) == ecfg.kv_cache_bytes() // 4
    rope, embeds, logits = 256 * 16 * 4, 4 * 64 * 64 * 2, 4 * 100 * 4
    assert ecfg.state_bytes() == ecfg.kv_cache_bytes() + rope + embeds + logits
    need = ecfg.state_bytes()
    assert (
        ef.EngineConfig.create(cfg, max_input_len=64, kv_capacity=256, max_state_bytes=need) == ecfg
    )
    with pytest.raises(
        ef.ConfigError,
        match=rf"EngineConfig: state_bytes={need} \(expected <= {need - 1}, the max_state_bytes argument\); the KV cache alone is 262144 bytes = 2 x 2 layers x max_batch_size=4 x 2 kv heads x kv_capacity=256 x head_dim=16 x 2 bytes \(bfloat16\); lower max_batch_size or kv_capacity",
    ):
        ef.EngineConfig.create(cfg, max_input_len=64, kv_capacity=256, max_state_bytes=need - 1)
    # The default bound comes from the device (host memory on CPU): a 1M-token cache of a
    # 128-layer model cannot fit, and the message says how much was asked for.
    big = parse(num_hidden_layers=128, num_key_value_heads=4, head_dim=1024)
    with pytest.raises(
        ef.ConfigError,
        match=r"state_bytes=\d+ \(expected <= \d+, 90% of the \d+ bytes available on",
    ):
        ef.EngineConfig.create(big, max_batch_size=64, max_input_len=1 << 20, kv_capacity=1 << 20)
    engine_json = {**BASE, **ecfg.to_dict()}
    with pytest.raises(
        ef.ConfigError, match=r"state_bytes=\d+ \(expected <= 1000, the max_state_bytes"
    ):
        ef.EngineConfig.from_dict(engine_json, max_state_bytes=1000)


def _transformers_rope(arch: str, **kwargs) -> dict:
    import transformers

    config_cls = getattr(transformers, arch.replace("ForCausalLM", "Config"))
    return dict(config_cls(**kwargs).rope_parameters)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "yarn", "factor": 4.0},
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    ],
)
def test_rope_without_original_max_positions_matches_transformers(scaling):
    hf = _transformers_rope(
        "LlamaForCausalLM", max_position_embeddings=512, rope_scaling=dict(scaling)
    )
    ours = parse(rope_scaling=dict(scaling)).rope
    assert ours.original_max_position_embeddings == hf["original_max_position_embeddings"]
    assert ours.factor == hf["factor"]
    if "original_max_position_embeddings" not in scaling:
        assert ours.original_max_position_embeddings == BASE["max_position_embeddings"]


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_sliding_window_null_is_full_attention_as_in_transformers(family):
    import transformers

    arch = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[family]
    extra = dict(use_sliding_window=True, sliding_window=None, max_window_layers=1)
    hf = getattr(transformers, arch.replace("ForCausalLM", "Config"))(num_hidden_layers=2, **extra)
    assert hf.sliding_window is None  # transformers: every layer attends fully
    cfg = parse(architectures=[arch], model_type=family, **extra)
    assert cfg.sliding_windows == (0, 0)
    explicit = parse(
        architectures=[arch],
        model_type=family,
        layer_types=["full_attention", "sliding_attention"],
        **extra,
    )
    assert explicit.sliding_windows == (0, 0)
    windowed = parse(architectures=[arch], model_type=family, **{**extra, "sliding_window": 8})
    assert windowed.sliding_windows == (0, 8)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"a": "\xff\xfe"}', r"config.json: byte 7=b'\\xff' \(expected UTF-8 text\)"),
        (b"[" * 100_000 + b"]" * 100_000, r"config.json: JSON nesting too deep"),
        (b'{"vocab_size": ' + b"9" * 5000 + b"}", r"config.json: invalid JSON value"),
    ],
)
def test_hostile_config_files_raise_config_error(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(ef.ConfigError, match=match):
        ModelConfig.from_file(tmp_path)


def test_a_bad_torch_dtype_names_torch_dtype():
    raw = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
    raw |= {"num_hidden_layers": 1, "intermediate_size": 128, "vocab_size": 32, "torch_dtype": 1}
    with pytest.raises(ef.ConfigError, match=r"config.json: torch_dtype=1 \(expected one of"):
        ef.ModelConfig.from_dict(raw)
