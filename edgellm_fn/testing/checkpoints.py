"""Checkpoint directories made up on the spot: a character-level tokenizer of any vocabulary
size, and a bench preset's shape with random weights (what ``transformers`` and
``edgellm-fn serve`` both load), for tests and load benchmarks that need a real directory."""

from __future__ import annotations

import json
from pathlib import Path

#: The chat template of the made-up tokenizers: ``[role]content`` lines.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def write_char_tokenizer(path: str | Path, vocab_size: int = 128) -> None:
    """A character-level tokenizer of exactly ``vocab_size`` ids in ``path``.

    Ids: 0 ``<pad>``, 1 ``<s>``, 2 ``</s>``, then newline and printable ASCII, then fillers.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    path = Path(path)
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


def write_preset_checkpoint(preset: str, path: str | Path, dtype: str = "bfloat16") -> Path:
    """A Hugging Face checkpoint of bench preset ``preset`` with random weights
    (``bench.presets.random_params``) and a character tokenizer of its vocabulary, in ``path``
    (created; a directory that already holds files is refused, nothing there is overwritten)."""
    import jax

    from ..bench.presets import get_preset, random_params
    from ..errors import InputError
    from ..models.loader import save_weights

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise InputError(
            f"write_preset_checkpoint: {path} already exists and is not an empty directory "
            "(expected a new path: nothing there is overwritten)"
        )
    spec = get_preset(preset)
    cfg = spec.model
    path.mkdir(parents=True, exist_ok=True)
    params = random_params(cfg, jax.random.PRNGKey(0), dtype)
    save_weights(cfg, params, path / "model.safetensors")
    config = {**spec.hf_config, "dtype": dtype, "bos_token_id": 1, "eos_token_id": 2}
    config.pop("torch_dtype", None)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    write_char_tokenizer(path, cfg.vocab_size)
    return path
