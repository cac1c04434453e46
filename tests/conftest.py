"""Shared fixtures: strict JAX numerics, PRNG keys, and tiny real checkpoints of each family."""

from __future__ import annotations

import gc
import os

# The CPU suite compiles hundreds of tiny programs and runs each a few times: LLVM at -O0
# compiles them ~30% faster and they still run in milliseconds (set before JAX starts a
# backend; a GPU host keeps its default).
if not os.path.exists("/dev/nvidiactl"):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax
import numpy as np
import pytest

from edgellm_fn.testing.checkpoints import CHAT_TEMPLATE as CHAT_TEMPLATE
from edgellm_fn.testing.checkpoints import write_char_tokenizer as write_char_tokenizer

jax.config.update("jax_numpy_dtype_promotion", "strict")


#: Memory mappings of this process past which a module's end drops the compiled executables.
MAX_MAPPINGS = 30_000


def _mappings() -> int:
    try:
        with open("/proc/self/maps") as fh:
            return sum(1 for _ in fh)
    except OSError:
        return 0


@pytest.fixture(autouse=True, scope="module")
def _release_executables():
    """Drop the compiled executables at a module's end once the process holds many mappings.

    Every XLA CPU executable holds several memory mappings; the whole suite in one process kept
    them all and crossed the kernel's ``vm.max_map_count`` (65,530), where LLVM aborts. Below
    ``MAX_MAPPINGS`` the executables stay, so later modules reuse them.
    """
    yield
    if _mappings() > MAX_MAPPINGS:
        jax.clear_caches()
        gc.collect()


# Small but complete configs of every supported family; each exercises a different feature.
FAMILIES = {
    "llama": dict(  # GQA + llama3 rope scaling + untied embeddings
        arch="LlamaForCausalLM",
        kwargs=dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=False,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    "qwen2": dict(  # q/k/v bias, tied embeddings, no GQA
        arch="Qwen2ForCausalLM",
        kwargs=dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    ),
    "qwen3": dict(  # per-head q/k norm, head_dim independent of hidden/heads, GQA
        arch="Qwen3ForCausalLM",
        kwargs=dict(
            num_attention_heads=4, num_key_value_heads=1, head_dim=24, tie_word_embeddings=False
        ),
    ),
    "mistral": dict(  # sliding window on every layer, GQA
        arch="MistralForCausalLM",
        kwargs=dict(num_attention_heads=4, num_key_value_heads=2, sliding_window=5),
    ),
    "gemma2": dict(  # sandwich (1 + w) norms, soft-capping, query_pre_attn_scalar, local/global
        arch="Gemma2ForCausalLM",
        kwargs=dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=5,
            attn_logit_softcapping=1.5,
            final_logit_softcapping=2.5,
            hidden_activation="gelu_pytorch_tanh",
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
    ),
    "gemma3": dict(  # + q/k norm, its own rope for local layers, scaled global rope
        arch="Gemma3ForCausalLM",
        config="Gemma3TextConfig",
        kwargs=dict(
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
            },
        ),
    ),
    "phi3": dict(  # fused qkv_proj / gate_up_proj, partial rotary, longrope (short factors)
        arch="Phi3ForCausalLM",
        kwargs=dict(
            pad_token_id=0,
            num_attention_heads=4,
            num_key_value_heads=2,
            original_max_position_embeddings=64,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.3, 1.9, 2.6],
                "long_factor": [1.5, 2.5, 4.0, 7.0],
            },
        ),
    ),
}


def make_hf_model(family: str, seed: int = 0, **overrides):
    """A random float32 ``transformers`` model of ``family`` (vocab 128, hidden 64, 2 layers)."""
    import torch
    import transformers

    spec = FAMILIES[family]
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=112,
        num_hidden_layers=2,
        max_position_embeddings=256,
        initializer_range=0.15,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(spec["kwargs"])
    kwargs.update(overrides)
    config_cls = getattr(
        transformers, spec.get("config", spec["arch"].replace("ForCausalLM", "Config"))
    )
    torch.manual_seed(seed)
    model = getattr(transformers, spec["arch"])(config_cls(**kwargs)).eval()
    if family.startswith("gemma"):  # (1 + w) norms start at w = 0: random w tests the offset
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.normal_(0.0, 0.3)
    if family == "qwen2":  # random (non-zero) biases so the bias path is really tested
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (
                    layer.self_attn.q_proj,
                    layer.self_attn.k_proj,
                    layer.self_attn.v_proj,
                ):
                    proj.bias.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """One saved checkpoint directory (weights + char tokenizer) per family."""
    out = {}
    for family in FAMILIES:
        path = tmp_path_factory.mktemp(f"ckpt_{family}")
        make_hf_model(family).save_pretrained(path)
        write_char_tokenizer(path)
        out[family] = str(path)
    return out


@pytest.fixture(scope="session")
def hf_models(checkpoints):
    """The ``transformers`` models reloaded from the saved checkpoints (float32)."""
    import transformers

    return {
        f: transformers.AutoModelForCausalLM.from_pretrained(p, dtype="float32").eval()
        for f, p in checkpoints.items()
    }


@pytest.fixture
def rng() -> np.random.RandomState:
    return np.random.RandomState(1234)


@pytest.fixture
def getkey():
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 1000))
    return lambda: next(keys)
