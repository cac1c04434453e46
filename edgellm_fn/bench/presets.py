"""Benchmark model presets (Hugging Face config dicts) and random params made on the device.

Each preset is the ``config.json`` of a public model (shapes only; no checkpoint is read) plus the
run settings the benchmark uses for it by default. ``random_params`` draws the params pytree of
``models/llama.py`` directly on the default device from a PRNG key, in the requested dtype.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from ..config import EngineConfig, ModelConfig
from ..dtypes import FLOAT_DTYPES
from ..dtypes import dtype as lookup_dtype
from ..errors import InputError
from ..models.llama import Params


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    """A model shape and the default run matrix for it.

    Attributes:
      name: preset name (``--preset``).
      hf_config: the model's Hugging Face ``config.json`` as a dict.
      batches, contexts: default run matrix (``--batch``, ``--context``).
      kv_capacity: KV slots per row (``--kv-capacity``).
      steps, warmup: timed and untimed decode steps per row.
      peers: default ``--peers``.
    """

    name: str
    hf_config: Mapping[str, Any]
    batches: tuple[int, ...] = (1, 8)
    contexts: tuple[int, ...] = (128, 2048)
    kv_capacity: int = 4096
    steps: int = 200
    warmup: int = 5
    peers: str = "hf,hf-compile,naive"

    @property
    def model(self) -> ModelConfig:
        return ModelConfig.from_dict(self.hf_config, f"preset {self.name}")


_LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "dtype": "bfloat16",
}

_QWEN2_5_0_5B = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "use_sliding_window": False,
    "sliding_window": 32768,
    "max_window_layers": 24,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151643,
    "dtype": "bfloat16",
}

_QWEN3_1_7B = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "vocab_size": 151936,
    "hidden_size": 2048,
    "intermediate_size": 6144,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "attention_bias": False,
    "use_sliding_window": False,
    "max_window_layers": 28,
    "tie_word_embeddings": True,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "dtype": "bfloat16",
}

# Tensor-parallel shapes (issue #17): Llama 3.1 8B and 70B (GQA with 8 KV heads, untied).
_LLAMA_3_1_8B = {
    **_LLAMA_3_2_1B,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rope_scaling": {**_LLAMA_3_2_1B["rope_scaling"], "factor": 8.0},
    "tie_word_embeddings": False,
}
_LLAMA_3_1_70B = {
    **_LLAMA_3_1_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
}

# CPU smoke preset: the Llama layout (llama3 rope, GQA, tied), small enough for a 2-core machine.
_TINY = {
    **_LLAMA_3_2_1B,
    "vocab_size": 512,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 1024,
    "rope_scaling": {**_LLAMA_3_2_1B["rope_scaling"], "original_max_position_embeddings": 64},
    "bos_token_id": 1,
    "eos_token_id": 2,
}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(name="llama-3.2-1b", hf_config=_LLAMA_3_2_1B),
        Preset(name="qwen2.5-0.5b", hf_config=_QWEN2_5_0_5B),
        Preset(name="qwen3-1.7b", hf_config=_QWEN3_1_7B),
        # random weights only (no peer): one GPU holds the 8B, the 70B needs --tensor-parallel
        Preset(name="llama-3.1-8b", hf_config=_LLAMA_3_1_8B, batches=(1, 8), peers=""),
        Preset(name="llama-3.1-70b", hf_config=_LLAMA_3_1_70B, batches=(1, 8), peers=""),
        Preset(
            name="tiny",
            hf_config=_TINY,
            batches=(1, 4),
            contexts=(32, 128),
            kv_capacity=256,
            steps=50,
            warmup=3,
            peers="hf,naive",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Looks a preset up by name.

    Raises:
      InputError: unknown name (the message lists the known ones).
    """
    if name not in PRESETS:
        raise InputError(f"bench: --preset={name!r} (expected one of {sorted(PRESETS)})")
    return PRESETS[name]


def param_shapes(cfg: ModelConfig) -> Params:
    """The params pytree of ``models/llama.py`` with shapes (tuples) instead of arrays."""
    h, f, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv = cfg.q_size + 2 * cfg.kv_size
    shapes: Params = {"embed": (cfg.vocab_size, h), "final_norm": (h,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (cfg.vocab_size, h)
    layer: dict[str, tuple[int, ...]] = {
        "attn_norm": (h,),
        "wqkv": (qkv, h),
        "wo": (h, cfg.q_size),
        "mlp_norm": (h,),
        "w_gate_up": (2 * f, h),
        "w_down": (h, f),
    }
    if cfg.qkv_bias:
        layer["bqkv"] = (qkv,)
    if cfg.o_bias:
        layer["bo"] = (h,)
    if cfg.qk_norm:
        layer.update(q_norm=(d,), k_norm=(d,))
    if cfg.mlp_bias:
        layer.update(b_gate_up=(2 * f,), b_down=(h,))
    shapes["layers"] = [dict(layer) for _ in range(cfg.num_hidden_layers)]
    return shapes


def random_params(
    cfg: ModelConfig,
    key: jax.Array,
    dtype: str = "bfloat16",
    *,
    tensor_parallel: EngineConfig | None = None,
) -> Params:
    """Random params drawn on the default device (one jitted call, no host copy).

    With ``tensor_parallel`` (an engine config of ``tensor_parallel > 1``) they are drawn in its
    TP layout, each device drawing only its shard (``engine/sharding.py``).

    Matrices are ``N(0, 1/fan_in)`` and the embedding ``N(0, 1)``, so activations stay O(1) and
    greedy logits are well separated; norm weights are 1 + noise and biases noise (std 0.1).

    Raises:
      InputError: unknown ``dtype``.
    """
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"bench: --dtype={dtype!r} (expected one of {sorted(FLOAT_DTYPES)})")
    init = _init_fn(cfg, dtype)
    if tensor_parallel is None or tensor_parallel.tensor_parallel == 1:
        return init(key)
    from ..engine.sharding import param_shardings, to_tp_layout

    def draw(k: jax.Array) -> Params:
        return to_tp_layout(cfg, init(k))

    out = param_shardings(tensor_parallel, jax.eval_shape(draw, key))
    return jax.jit(draw, out_shardings=out)(key)


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


@functools.cache
def _init_fn(cfg: ModelConfig, dtype: str):
    shapes = param_shapes(cfg)
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)
    jdt = lookup_dtype(dtype).jnp

    def init(key: jax.Array) -> Params:
        keys = jax.random.split(key, len(with_paths))
        out = []
        for k, (path, shape) in zip(keys, with_paths, strict=True):
            name = jax.tree_util.keystr(path)
            if "norm" in name:
                x = 1.0 + 0.1 * jax.random.normal(k, shape, jnp.float32)
            elif len(shape) == 1:  # biases
                x = 0.1 * jax.random.normal(k, shape, jnp.float32)
            elif "embed" in name:
                x = jax.random.normal(k, shape, jdt)
            else:
                x = jax.random.normal(k, shape, jdt) * jnp.asarray(shape[1] ** -0.5, jdt)
            out.append(x.astype(jdt))
        return jax.tree_util.tree_unflatten(treedef, out)

    return jax.jit(init)
