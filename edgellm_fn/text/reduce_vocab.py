"""``edgellm-fn reduce-vocab``: a vocab map chosen from the tokens of a request file.

Upstream's input-aware method: tokenize every request as ``generate`` would, keep every special
token and EOS id, then the most frequent ids up to ``size`` (``models.vocab.choose_vocab``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import ModelConfig
from ..errors import ConfigError
from ..models.vocab import VOCAB_MAP_FILE, choose_vocab, save_vocab_map
from .requests import load_requests
from .tokenizer import Tokenizer

#: What the tool writes beside the map: the model, size and source of the choice.
REPORT_FILE = "reduce_vocab.json"


def special_ids(tokenizer: Tokenizer, cfg: ModelConfig) -> set[int]:
    """Every id a reduced vocabulary must keep: added special tokens, the special-token fields
    of ``tokenizer_config.json`` (bos, pad, ...) and every EOS id."""
    ids = {i for i, tok in tokenizer.backend.get_added_tokens_decoder().items() if tok.special}
    ids |= set(cfg.eos_token_ids) | set(tokenizer.eos_token_ids)
    fields = [tokenizer.token_id(f) for f in tokenizer.special_tokens]
    for value in (cfg.bos_token_id, *fields):
        if value is not None:
            ids.add(int(value))
    return ids


def reduce_vocab(model: str | Path, input_file: str | Path, size: int, out: str | Path) -> Path:
    """Writes ``out/vocab_map.safetensors`` (and ``reduce_vocab.json``) for ``model``.

    Args:
      model: checkpoint directory (``config.json`` and the tokenizer files).
      input_file: request JSON (``text/requests.py``) whose tokens pick the kept ids.
      size: ids to keep (``reduced_vocab_size``).
      out: a new directory, or an empty part of one: never the checkpoint directory, and no
        existing map or report is overwritten.

    Returns:
      The path of the written map.

    Raises:
      ConfigError: ``out`` is the checkpoint directory or would overwrite a file, or ``size`` is
        out of range (``choose_vocab``).
      InputError: the request file is invalid.
    """
    from ..cli import encode_request  # the tokens generate would feed, exactly

    model, out = Path(model), Path(out)
    if out.resolve() == model.resolve():
        raise ConfigError(
            f"reduce-vocab: --out={out} (expected a directory other than the checkpoint "
            "directory); the checkpoint stays untouched, write the map beside it"
        )
    for name in (VOCAB_MAP_FILE, REPORT_FILE):
        if (out / name).exists():
            raise ConfigError(
                f"reduce-vocab: {out / name} exists (expected a new file); refusing to "
                "overwrite it, pass another --out"
            )
    cfg = ModelConfig.from_file(model)
    tokenizer = Tokenizer.from_dir(model, vocab_size=cfg.vocab_size)
    batch = load_requests(input_file)
    chat = batch.apply_chat_template
    tokens = [encode_request(tokenizer, r.messages, chat) for r in batch.requests]
    special = special_ids(tokenizer, cfg)
    ids = choose_vocab(tokens, special, size, cfg.vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    path = save_vocab_map(ids, out / VOCAB_MAP_FILE)
    report = {
        "model": str(model),
        "input_file": str(input_file),
        "reduced_vocab_size": int(ids.size),
        "vocab_size": cfg.vocab_size,
        "special_ids": sorted(special),
        "input_tokens": sum(len(t) for t in tokens),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    return path
