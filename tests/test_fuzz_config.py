"""Bounded fuzzing of config.json parsing: success or a ConfigError that names the field."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgellm_fn.config import EngineConfig, ModelConfig
from edgellm_fn.errors import ConfigError

from .fuzz_common import JSON, Tally

VALID = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "torch_dtype": "float32",
        "eos_token_id": 2,
        "bos_token_id": 1,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        "rope_theta": 500000.0,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "use_sliding_window": True,
        "sliding_window": 16,
        "max_window_layers": 1,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": 128,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 24,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256,
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 4.0,
            "rope_theta": 1000000.0,
            "beta_fast": 32,
            "beta_slow": 1,
        },
        "layer_types": ["full_attention", "sliding_attention"],
    },
}
FIELDS = sorted({k for raw in VALID.values() for k in raw} | {"head_dim", "partial_rotary_factor"})
ROPE_FIELDS = [
    "rope_type",
    "factor",
    "rope_theta",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "short_factor",
    "long_factor",
]
MISSING = object()
MUTATION = st.tuples(st.sampled_from(FIELDS + ["extra_field"]), st.one_of(st.just(MISSING), JSON))
ROPE_MUTATION = st.tuples(st.sampled_from(ROPE_FIELDS), st.one_of(st.just(MISSING), JSON))

TALLY = Tally("config")


def _mutate(raw: dict, mutations) -> list[str]:
    named = []
    for key, value in mutations:
        target, field = raw, key
        if key in ROPE_FIELDS:
            target = raw.get("rope_parameters") or raw.get("rope_scaling")
            if not isinstance(target, dict):
                continue
        named.append(field)
        if value is MISSING:
            target.pop(field, None)
        else:
            target[field] = value
    return named


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    TALLY.report()


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    family=st.sampled_from(sorted(VALID)),
    mutations=st.lists(st.one_of(MUTATION, ROPE_MUTATION), min_size=1, max_size=3),
)
def test_mutated_configs_parse_or_name_the_field(family, mutations):
    raw = copy.deepcopy(VALID[family])
    named = _mutate(raw, mutations)
    try:
        cfg = ModelConfig.from_dict(raw)
    except ConfigError as e:
        TALLY.add("ConfigError")
        message = str(e)
        assert message.startswith("config.json: "), message
        # The message names a field: one we mutated, or one whose check the mutation tripped.
        assert any(f in message for f in named) or any(
            f in message for f in FIELDS + ROPE_FIELDS + ["rotary dim", "rope parameters"]
        ), message
        return
    TALLY.add("ok")
    # Whatever parsed is usable: finite positive numbers, bounded sizes, a KV-bytes figure.
    assert math.isfinite(cfg.rms_norm_eps) and cfg.rms_norm_eps > 0
    assert math.isfinite(cfg.rope.theta) and cfg.rope.theta > 0
    assert math.isfinite(cfg.rope.factor) and cfg.rope.factor > 0
    assert 1 <= cfg.num_hidden_layers <= 1024 and len(cfg.sliding_windows) == cfg.num_hidden_layers
    try:
        ecfg = EngineConfig.create(cfg, max_batch_size=1, max_input_len=8, kv_capacity=16)
    except ConfigError as e:
        assert "state_bytes=" in str(e), str(e)
        return
    assert ecfg.kv_cache_bytes() > 0
