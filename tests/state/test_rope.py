"""RoPE tables equal ``transformers``' rotary embeddings for every rope type."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgellm_fn as ef
from edgellm_fn.models.llama import apply_rope
from edgellm_fn.state.rope import rope_table

SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "yarn_mscale": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 64,
        "mscale": 0.707,
        "mscale_all_dim": 0.5,
        "beta_fast": 16.0,
    },
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": {
        "rope_type": "longrope",
        "original_max_position_embeddings": 128,
        "short_factor": [1.0 + i / 10 for i in range(16)],
        "long_factor": [2.0 + i for i in range(16)],
        "factor": 4.0,
    },
}


@pytest.mark.parametrize("name", sorted(SCALINGS))
def test_table_matches_transformers(name):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_cfg = LlamaConfig(
        hidden_size=128,
        num_attention_heads=4,
        rope_theta=10000.0,
        max_position_embeddings=512,
        rope_scaling=SCALINGS[name],
    )
    cfg = ef.ModelConfig.from_dict({**hf_cfg.to_dict(), "architectures": ["LlamaForCausalLM"]})
    table = np.asarray(rope_table(cfg.rope, 128))[0]
    emb = LlamaRotaryEmbedding(hf_cfg)
    x = torch.zeros(1, 128, 32)
    cos, sin = emb(x, torch.arange(128)[None])
    np.testing.assert_allclose(table[:, :16], cos[0, :, :16].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table[:, 16:], sin[0, :, :16].numpy(), rtol=1e-5, atol=1e-6)


def test_dynamic_rope_refuses_long_tables_and_longrope_has_a_long_one():
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def config(kind):
        hf = LlamaConfig(
            hidden_size=128,
            num_attention_heads=4,
            max_position_embeddings=512,
            rope_scaling=SCALINGS[kind],
        )
        return hf, ef.ModelConfig.from_dict({**hf.to_dict(), "architectures": ["LlamaForCausalLM"]})

    _, dynamic = config("dynamic")
    orig = dynamic.rope.original_max_position_embeddings
    with pytest.raises(
        ef.ConfigError, match=rf"kv capacity={2 * orig} \(expected <= original_max_position_emb"
    ):
        rope_table(dynamic.rope, 2 * orig)
    hf, longrope = config("longrope")
    orig = longrope.rope.original_max_position_embeddings
    inv, scale = ROPE_INIT_FUNCTIONS["longrope"](hf, torch.device("cpu"), seq_len=orig + 1)
    angles = np.arange(2 * orig, dtype=np.float32)[:, None] * inv.numpy()[None, :]
    want = np.concatenate([np.cos(angles), np.sin(angles)], -1) * scale
    got = np.asarray(rope_table(longrope.rope, 2 * orig, long=True))[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, np.asarray(rope_table(longrope.rope, 2 * orig))[0], atol=1e-3)


def test_partial_rotary_rotates_only_the_first_channels(rng):
    x = rng.randn(2, 3, 4, 16).astype(np.float32)
    angles = rng.randn(2, 3, 4).astype(np.float32)  # rot = 8 channels
    cos_sin = np.concatenate([np.cos(angles), np.sin(angles)], -1)
    out = np.asarray(apply_rope(x, cos_sin))
    x1, x2 = x[..., :4], x[..., 4:8]
    c, s = np.cos(angles)[:, :, None], np.sin(angles)[:, :, None]
    np.testing.assert_allclose(out[..., :4], x1 * c - x2 * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[..., 4:8], x2 * c + x1 * s, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[..., 8:], x[..., 8:])
