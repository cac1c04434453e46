"""Engine directories (as upstream): engine file, ``config.json``, ``embedding.safetensors``,
tokenizer files; and the check of an engine's introspected I/O against the contract.

``config.json`` is the checkpoint's config plus ``builder_config``/dtypes
(``EngineConfig.to_dict``) and an ``engine`` section ``{"provider", "file", "builder"}``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...config import EngineConfig, read_json
from ...errors import EngineError
from ...models.safetensors_io import load_file, save_file
from ...models.vocab import VOCAB_MAP_FILE, load_vocab_map, save_vocab_map
from ..spec import EngineSpec

CONFIG_FILE = "config.json"
EMBEDDING_FILE = "embedding.safetensors"
EMBEDDING_TENSOR = "embedding"
ENGINE_FILES = {"onnxruntime": "model.onnx", "tensorrt": "model.engine"}
#: ``engine.provider`` as directories written before the provider names were unified say it.
_OLD_NAMES = {"onnx": "onnxruntime"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
    "chat_template.jinja",
)


def write_engine_dir(
    out_dir: Path,
    ckpt_dir: Path,
    cfg: EngineConfig,
    provider: str,
    embedding: np.ndarray,
    builder: str,
    vocab_map: np.ndarray | None = None,
) -> None:
    """Writes ``config.json``, ``embedding.safetensors`` (+ ``vocab_map.safetensors`` for a
    reduced vocabulary) and copies tokenizer files.

    The engine file itself is written by the builder (``ENGINE_FILES[provider]``); ``builder``
    names what built it (e.g. ``"tensorrt_rtx_bindings 1.7.1.116"``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = read_json(ckpt_dir / CONFIG_FILE)
    raw.update(cfg.to_dict())
    raw["engine"] = {"provider": provider, "file": ENGINE_FILES[provider], "builder": builder}
    (out_dir / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
    save_file({EMBEDDING_TENSOR: np.asarray(embedding)}, out_dir / EMBEDDING_FILE)
    (out_dir / VOCAB_MAP_FILE).unlink(missing_ok=True)
    if vocab_map is not None:
        save_vocab_map(vocab_map, out_dir / VOCAB_MAP_FILE)
    for name in TOKENIZER_FILES:
        if (ckpt_dir / name).is_file():
            shutil.copyfile(ckpt_dir / name, out_dir / name)


def read_engine_dir(engine_dir: str | Path, provider: str) -> tuple[EngineConfig, Path, np.ndarray]:
    """Reads an engine directory written for ``provider``.

    Returns:
      ``(config, engine file path, embedding [V, H])``.

    Raises:
      EngineError: a file is missing, or the directory was built for another provider.
      ConfigError: ``config.json`` is invalid.
    """
    engine_dir = Path(engine_dir)
    if not engine_dir.is_dir():
        raise EngineError(
            f"{engine_dir}: not a directory (expected an engine directory); "
            "build one with `edgellm-fn build`"
        )
    raw = read_json(engine_dir / CONFIG_FILE)
    cfg = EngineConfig.from_dict(raw, str(engine_dir / CONFIG_FILE))
    section: Any = raw.get("engine")
    if isinstance(section, Mapping) and section.get("provider") in _OLD_NAMES:
        section = {**section, "provider": _OLD_NAMES[section["provider"]]}
    if not isinstance(section, Mapping) or section.get("provider") not in ENGINE_FILES:
        raise EngineError(
            f"{engine_dir / CONFIG_FILE}: engine={section!r} (expected {{'provider': one of "
            f"{sorted(ENGINE_FILES)}, 'file': ...}}); rebuild with `edgellm-fn build`"
        )
    if section["provider"] != provider:
        raise EngineError(
            f"{engine_dir / CONFIG_FILE}: engine.provider={section['provider']!r} (expected "
            f"{provider!r}); load it with the {section['provider']!r} provider or rebuild"
        )
    path = engine_dir / str(section.get("file", ENGINE_FILES[provider]))
    if not path.is_file():
        raise EngineError(
            f"{path}: engine file not found (named by {CONFIG_FILE}); rebuild the engine directory"
        )
    emb_path = engine_dir / EMBEDDING_FILE
    if not emb_path.is_file():
        raise EngineError(
            f"{emb_path}: file not found (expected the [vocab, hidden] embedding "
            "table); rebuild the engine directory"
        )
    embedding = load_file(emb_path, {EMBEDDING_TENSOR})[EMBEDDING_TENSOR]
    want = (cfg.model.vocab_size, cfg.model.hidden_size)
    if embedding.shape != want:
        raise EngineError(
            f"{emb_path}: {EMBEDDING_TENSOR} shape={list(embedding.shape)} "
            f"(expected {list(want)} from {CONFIG_FILE})"
        )
    return cfg, path, embedding


def read_vocab_map(engine_dir: str | Path, cfg: EngineConfig):
    """The engine directory's ``[reduced_vocab_size]`` vocab map as a device array; None when
    ``builder_config`` has no ``reduced_vocab_size``.

    Raises:
      ConfigError: the file is missing, ill-formed, or its length contradicts config.json.
    """
    import jax.numpy as jnp

    reduced = cfg.deployment.reduced_vocab_size
    path = Path(engine_dir) / VOCAB_MAP_FILE
    if not reduced:
        if path.exists():
            raise EngineError(
                f"{path}: a vocab map without builder_config.reduced_vocab_size (expected none "
                "for a full-vocabulary engine); rebuild the engine directory"
            )
        return None
    ids = load_vocab_map(path, cfg.model)
    if ids.size != reduced:
        raise EngineError(
            f"{path}: length={ids.size} (expected reduced_vocab_size={reduced} from "
            f"{CONFIG_FILE}); rebuild the engine directory"
        )
    return jnp.asarray(ids)


#: An introspected binding: direction, dtype name, shape with -1 for dynamic dims.
FoundBinding = tuple[str, str, tuple[int, ...]]


def check_io(found: Mapping[str, FoundBinding], spec: EngineSpec, where: str) -> None:
    """Checks an engine's introspected bindings against ``spec``.

    Static dims (hidden, heads, head dim, vocab, KV capacity) must match exactly; dims that the
    contract makes dynamic must be dynamic (-1) in the engine.

    Raises:
      EngineError: naming the first missing, unexpected or mismatched binding.
    """
    for b in spec.bindings:
        if b.name not in found:
            raise EngineError(
                f"{where}: missing binding {b.name!r} (expected {b.io} {b.dtype}); the engine was "
                "not exported with this config (layers?), rebuild it"
            )
        io, dtype, shape = found[b.name]
        want = spec.built_shape(b)
        if io != b.io or dtype != b.dtype:
            raise EngineError(
                f"{where}: binding {b.name!r} is {io} {dtype} (expected {b.io} "
                f"{b.dtype}); rebuild the engine with the config's dtypes"
            )
        if shape != want:
            raise EngineError(
                f"{where}: binding {b.name!r} shape={list(shape)} (expected {list(want)}, -1 = "
                f"dynamic); config.json contradicts the engine (kv capacity, dims?), rebuild it"
            )
    extra = sorted(set(found) - {b.name for b in spec.bindings})
    if extra:
        raise EngineError(
            f"{where}: unexpected binding {extra[0]!r} (not in the engine contract); "
            "the engine was built for another model kind"
        )
