"""Strict parsing of the Mistral, Gemma 2/3 and Phi-3 config fields: named errors."""

from __future__ import annotations

import pytest

from edgellm_fn import ModelConfig
from edgellm_fn.errors import ConfigError

BASE = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    head_dim=8,
)


def parse(arch: str, model_type: str, **fields) -> ModelConfig:
    return ModelConfig.from_dict(
        {"architectures": [arch], "model_type": model_type, **BASE, **fields}
    )


def test_transformers_defaults_apply_to_absent_gemma2_fields():
    cfg = parse("Gemma2ForCausalLM", "gemma2")
    assert (cfg.attn_softcap, cfg.final_softcap, cfg.query_pre_attn_scalar) == (50.0, 30.0, 256)
    assert cfg.sliding_windows == (4096, 0) and cfg.tie_word_embeddings
    assert cfg.hidden_act == "gelu_pytorch_tanh"
    off = parse("Gemma2ForCausalLM", "gemma2", attn_logit_softcapping=None)
    assert off.attn_softcap is None


def test_gemma3_legacy_rope_fields_and_pattern():
    cfg = parse(
        "Gemma3ForCausalLM",
        "gemma3_text",
        num_hidden_layers=6,
        rope_theta=1e6,
        rope_local_base_freq=1e4,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        sliding_window_pattern=3,
    )
    assert cfg.sliding_windows == (4096, 4096, 0, 4096, 4096, 0)
    assert (cfg.rope.rope_type, cfg.rope.factor, cfg.local_rope.rope_type) == (
        "linear",
        8.0,
        "default",
    )


def test_mistral_window_default_and_null():
    assert parse("MistralForCausalLM", "mistral").sliding_windows == (4096, 4096)
    assert parse("MistralForCausalLM", "mistral", sliding_window=None).sliding_windows == (0, 0)


@pytest.mark.parametrize(
    "arch, model_type, fields, match",
    [
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(attn_logit_softcapping=-1.0),
            r"attn_logit_softcapping=-1.0 \(expected a finite number > 0 or null\)",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(final_logit_softcapping="30"),
            r"final_logit_softcapping='30' \(expected a finite number > 0 or null\)",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(query_pre_attn_scalar=0),
            r"query_pre_attn_scalar=0 \(expected a finite number > 0",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(sliding_window=None),
            r"sliding_window=None \(expected an integer >= 1 for gemma2\)",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(use_bidirectional_attention=True),
            r"use_bidirectional_attention=True \(expected false or null\)",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(hidden_activation="swish"),
            r"hidden_activation='swish' \(expected one of",
        ),
        (
            "Gemma2ForCausalLM",
            "gemma2",
            dict(layer_types=["sliding_attention", "chunked"]),
            r"layer_types\[1\]='chunked' \(expected 'full_attention' or 'sliding_attention'\)",
        ),
        (
            "Gemma3ForCausalLM",
            "gemma3_text",
            dict(sliding_window_pattern=0),
            r"sliding_window_pattern=0 \(expected an integer >= 1",
        ),
        (
            "Gemma3ForCausalLM",
            "gemma3_text",
            dict(rope_parameters={"global": {}}),
            r"rope_parameters=.* \(expected an object with keys 'full_attention' and",
        ),
        (
            "Gemma3ForCausalLM",
            "gemma3_text",
            dict(rope_parameters={"full_attention": {"rope_type": "linear"}}),
            r"rope_parameters.full_attention: missing required field 'factor'",
        ),
        (
            "MistralForCausalLM",
            "mistral",
            dict(sliding_window=0),
            r"sliding_window=0 \(expected an integer 1\.\.16777216 or null\)",
        ),
        (
            "MistralForCausalLM",
            "mistral",
            dict(layer_types=["full_attention"] * 2),
            r"layer_types=.* \(expected absent or null for model_type 'mistral'",
        ),
        (
            "MistralForCausalLM",
            "mistral",
            dict(query_pre_attn_scalar=64),
            r"query_pre_attn_scalar=64 \(expected absent or null for model_type 'mistral'",
        ),
        (
            "LlamaForCausalLM",
            "llama",
            dict(final_logit_softcapping=30.0),
            r"final_logit_softcapping=30.0 \(expected absent or null for model_type 'llama'",
        ),
        (
            "Phi3ForCausalLM",
            "phi3",
            dict(
                rope_parameters={
                    "rope_type": "longrope",
                    "short_factor": [1.0],
                    "long_factor": [1.0] * 4,
                }
            ),
            r"short_factor has 1 entries \(expected rotary_dim/2=4\)",
        ),
        (
            "Phi3ForCausalLM",
            "phi3",
            dict(mlp_bias=True),
            r"mlp_bias=True \(expected absent or null for model_type 'phi3'",
        ),
    ],
)
def test_bad_family_fields_raise_named_errors(arch, model_type, fields, match):
    with pytest.raises(ConfigError, match=match):
        parse(arch, model_type, **fields)
