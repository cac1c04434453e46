"""Strict parsing of NemotronH (hybrid Mamba2 + attention) configs: layouts, aliases, errors."""

from __future__ import annotations

import math

import pytest

from edgellm_fn import EngineConfig, ModelConfig
from edgellm_fn.errors import ConfigError

BASE = dict(
    architectures=["NemotronHForCausalLM"],
    model_type="nemotron_h",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    hybrid_override_pattern="M*-M",
    mamba_num_heads=4,
    mamba_head_dim=8,
    ssm_state_size=16,
    n_groups=2,
    conv_kernel=4,
)


def parse(**fields) -> ModelConfig:
    raw = {**BASE, **fields}
    return ModelConfig.from_dict({k: v for k, v in raw.items() if v is not ...})


def test_pattern_and_defaults():
    cfg = parse()
    h = cfg.hybrid
    assert h.layer_types == ("mamba", "attention", "mlp", "mamba")
    assert (h.attention_layers, h.mamba_layers, cfg.num_kv_layers) == ((1,), (0, 3), 1)
    mc = h.mamba
    assert (mc.intermediate_size, mc.conv_dim, mc.in_proj_size) == (32, 96, 132)
    assert (mc.chunk_size, mc.activation, mc.conv_bias, mc.proj_bias) == (128, "silu", True, False)
    assert mc.dt_limit == (0.0, math.inf) and mc.ssm_dtype == "float32"
    assert mc.norm_group_size == 16 and cfg.hidden_act == "relu2"
    assert not cfg.llama_compatible and not cfg.tie_word_embeddings


def test_transformers_5_layout_legacy_aliases_and_json_infinity():
    cfg = parse(
        hybrid_override_pattern=...,
        layers_block_type=["mamba", "full_attention", "linear_attention", "mlp"],
        num_hidden_layers=4,
        mamba_d_conv=3,
        conv_kernel=...,
        mamba_chunk_size=64,
        time_step_limit=[0.0, {"__float__": "Infinity"}],
        mamba_ssm_cache_dtype="bfloat16",
    )
    assert cfg.hybrid.layer_types == ("mamba", "attention", "mamba", "mlp")
    assert (cfg.hybrid.mamba.conv_kernel, cfg.hybrid.mamba.chunk_size) == (3, 64)
    assert cfg.hybrid.mamba.ssm_dtype == "bfloat16"
    assert cfg.hybrid.mamba.dt_limit == (0.0, math.inf)


def test_the_scan_clamps_dt_to_time_step_limit_not_time_step_min():
    mc = parse(time_step_limit=[0.01, 5.0], time_step_min=0.2).hybrid.mamba
    assert mc.dt_limit == (0.01, 5.0)


def test_recurrent_state_bytes_count_mamba_layers_only():
    e = EngineConfig.create(parse(), max_batch_size=2, max_input_len=8, kv_capacity=16)
    # 2 Mamba layers x 2 rows x (SSM 4*8*16 f32 + conv 96*3 f32)
    assert e.recurrent_bytes() == 2 * 2 * (4 * 8 * 16 * 4 + 96 * 3 * 4)
    assert e.kv_cache_bytes() == 2 * 1 * 2 * 2 * 16 * 8 * 4  # one attention layer


@pytest.mark.parametrize(
    "field", ["mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel"]
)
def test_missing_mamba_field_is_named(field):
    with pytest.raises(ConfigError, match=f"missing required field '{field}'.*Mamba2 recurrent"):
        parse(**{field: ...})


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(hybrid_override_pattern="M*E-"), "MoE layer at index 2.*not supported"),
        (dict(layers_block_type=["moe", "full_attention"], hybrid_override_pattern=...), "MoE"),
        (dict(hybrid_override_pattern=...), "missing required field 'hybrid_override_pattern'"),
        (dict(hybrid_override_pattern="M*x"), "hybrid_override_pattern='M\\*x'"),
        (dict(hybrid_override_pattern="M-M"), "has no attention layer"),
        (
            dict(layers_block_type=["mamba", "full_attention"]),
            "hybrid_override_pattern gives layers .* but layers_block_type gives",
        ),
        (dict(num_hidden_layers=6), "num_hidden_layers=6 \\(expected 4"),
        (dict(conv_dim=100), "conv_dim=100 \\(expected .* = 96\\); the conv dims are inconsistent"),
        (dict(n_groups=3), "n_groups=3 \\(expected a divisor of mamba_num_heads=4"),
        (dict(conv_kernel=1), "conv_kernel=1 \\(expected >= 2"),
        (dict(ssm_state_size=0), "ssm_state_size=0 \\(expected an integer >= 1"),
        (dict(mamba_head_dim=True), "mamba_head_dim=True"),
        (dict(mamba_n_groups=4), "mamba_n_groups=4 contradicts n_groups=2"),
        (dict(mamba_ssm_cache_dtype="int8"), "mamba_ssm_cache_dtype='int8'"),
        (dict(mamba_hidden_act="tanh"), "mamba_hidden_act='tanh'"),
        (dict(mlp_hidden_act="swiglu"), "mlp_hidden_act='swiglu'"),
        (dict(time_step_limit=[1.0, 0.0]), "time_step_limit=\\[1.0, 0.0\\]"),
        (dict(time_step_limit=[-1.0, -0.5]), "time_step_limit=\\[-1.0, -0.5\\].*hi > 0"),
        (dict(time_step_limit=[{"__float__": "Infinity"}] * 2), "time_step_limit=.*lo finite"),
        (dict(mamba_proj_bias=True), "mamba_proj_bias=True .*ignores it"),
        (dict(residual_in_fp32=True), "residual_in_fp32=True"),
        (dict(attention_bias=True), "attention_bias=True \\(expected absent or null"),
        (dict(sliding_window=128), "sliding_window=128 \\(expected absent or null"),
        (dict(hidden_act="silu"), "hidden_act='silu' \\(expected absent or null"),
        (dict(num_key_value_heads=3), "num_key_value_heads=3 \\(expected a divisor"),
    ],
)
def test_bad_fields_raise_named_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        parse(**fields)
