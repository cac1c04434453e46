"""Shared fixtures: strict JAX numerics, PRNG keys, and tiny real checkpoints of each family."""

from __future__ import annotations

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

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
    config_cls = getattr(transformers, spec["arch"].replace("ForCausalLM", "Config"))
    torch.manual_seed(seed)
    model = getattr(transformers, spec["arch"])(config_cls(**kwargs)).eval()
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


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def write_char_tokenizer(path, vocab_size: int = 128) -> None:
    """A character-level tokenizer of exactly ``vocab_size`` ids for the tiny test models.

    Ids: 0 ``<pad>``, 1 ``<s>``, 2 ``</s>``, then newline and printable ASCII, then fillers.
    """
    import json

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    names = ["<pad>", "<s>", "</s>", *chars]
    names += [f"<x{i}>" for i in range(vocab_size - len(names))]
    tok = Tokenizer(models.WordLevel({n: i for i, n in enumerate(names)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "pad_token": "<pad>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )


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
