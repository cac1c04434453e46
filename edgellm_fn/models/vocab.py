"""Reduced vocabulary (upstream's ``reducedVocabSize``): a ``vocab_map`` of kept token ids.

``vocab_map[r]`` is the full-vocabulary id of logit column ``r`` (int32, strictly increasing, so
unique). The embedding stays full (prompts use any id); only the lm_head (or the tied embedding
used as one) is sliced to the kept rows at load, so the engine's ``logits`` are
``[rows, reduced_vocab_size]``, and the runtime maps every sampled column back to its full id
(``runtime/vocab.py``), so tokenizer decoding and EOS checks see full ids::

    full vocab:   0 1 2 3 4 5 6 7 8 9          lm_head [V, H]
    vocab_map:    [1, 2, 5, 8]                 lm_head[vocab_map] -> [4, H]
    logits:       [l1 l2 l5 l8]  argmax col 2 -> id vocab_map[2] = 5

The map is saved as ``vocab_map.safetensors`` (tensor ``vocab_map``) in its own directory (what
``edgellm-fn reduce-vocab`` writes) or in an engine directory; a JSON file (a list of ids, or
``{"vocab_map": [...]}``) is read too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError
from .safetensors_io import load_file, save_file

VOCAB_MAP_FILE = "vocab_map.safetensors"
VOCAB_MAP_TENSOR = "vocab_map"


def check_vocab_map(
    ids, vocab_size: int, eos_ids: Sequence[int] = (), where: str = "vocab_map"
) -> np.ndarray:
    """Validates a vocab map strictly; returns it as ``[N] int32``.

    Raises:
      ConfigError: not a 1-D integer array, empty, longer than ``vocab_size``, an id out of
        ``0..vocab_size-1``, not strictly increasing (unsorted or repeated), or missing an EOS id.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ConfigError(
            f"{where}: shape={list(arr.shape)} dtype={arr.dtype} (expected a 1-D integer array of "
            "full-vocabulary ids); write it with `edgellm-fn reduce-vocab`"
        )
    if not 1 <= arr.size <= vocab_size:
        raise ConfigError(
            f"{where}: length={arr.size} (expected 1..vocab_size={vocab_size}); a reduced "
            "vocabulary keeps at least one and at most every id"
        )
    bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(
            f"{where}: id[{i}]={int(arr[i])} (expected 0 <= id < vocab_size={vocab_size}); the map "
            "was made for another model"
        )
    steps = np.flatnonzero(np.diff(arr) <= 0)
    if steps.size:
        i = int(steps[0]) + 1
        raise ConfigError(
            f"{where}: id[{i}]={int(arr[i])} after id[{i - 1}]={int(arr[i - 1])} (expected "
            "strictly increasing ids: sorted, each once); sort and deduplicate the map"
        )
    missing = [int(e) for e in eos_ids if not np.isin(e, arr)]
    if missing:
        raise ConfigError(
            f"{where}: eos id {missing[0]} is not kept (expected every EOS id of config.json in "
            "the map); generation could never stop, add the special tokens"
        )
    return arr.astype(np.int32)


def load_vocab_map(path: str | Path, cfg: ModelConfig) -> np.ndarray:
    """Reads and validates a vocab map for the model ``cfg``.

    Args:
      path: a directory holding ``vocab_map.safetensors``, that file, or a JSON file.
      cfg: the model it reduces (vocab size and EOS ids).

    Raises:
      ConfigError: a missing or ill-formed file, or a map ``check_vocab_map`` refuses.
    """
    path = Path(path)
    file = path / VOCAB_MAP_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(
            f"{file}: vocab map not found (expected {VOCAB_MAP_FILE} or a JSON list of ids); "
            "write one with `edgellm-fn reduce-vocab`"
        )
    if file.suffix == ".json":
        try:
            raw = json.loads(file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{file}: not valid JSON ({e}); expected a list of ids") from None
        if isinstance(raw, dict):
            raw = raw.get(VOCAB_MAP_TENSOR)
        if not isinstance(raw, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in raw
        ):
            raise ConfigError(
                f"{file}: {VOCAB_MAP_TENSOR}={str(raw)[:60]} (expected a list of integer ids or "
                f'{{"{VOCAB_MAP_TENSOR}": [...]}})'
            )
        ids = np.asarray(raw, np.int64)
    else:
        try:
            tensors = load_file(file)
        except ValueError as e:
            raise ConfigError(f"{file}: not a readable safetensors file ({e})") from None
        if VOCAB_MAP_TENSOR not in tensors:
            raise ConfigError(
                f"{file}: tensors={sorted(tensors)} (expected a {VOCAB_MAP_TENSOR!r} tensor)"
            )
        ids = tensors[VOCAB_MAP_TENSOR]
        if ids.dtype != np.int32:
            raise ConfigError(f"{file}: {VOCAB_MAP_TENSOR} dtype={ids.dtype} (expected int32)")
    return check_vocab_map(ids, cfg.vocab_size, cfg.eos_token_ids, str(file))


def save_vocab_map(ids: np.ndarray, path: str | Path) -> Path:
    """Writes ``ids`` as ``vocab_map.safetensors`` (``path`` is the file or its directory)."""
    path = Path(path)
    file = path / VOCAB_MAP_FILE if path.is_dir() else path
    save_file({VOCAB_MAP_TENSOR: np.asarray(ids, np.int32)}, file)
    return file


def reduce_params(params: dict, vocab_map: np.ndarray) -> dict:
    """``params`` with ``lm_head`` = the kept rows of the lm_head (or of the tied embedding).

    The embedding stays full: prompts may hold any id.
    """
    head = params.get("lm_head", params["embed"])
    return {**params, "lm_head": jnp.take(head, jnp.asarray(vocab_map), axis=0)}


def choose_vocab(
    token_lists: Iterable[Sequence[int]], special_ids: Iterable[int], size: int, vocab_size: int
) -> np.ndarray:
    """Upstream's input-aware choice: every special id, then the most frequent input ids.

    Ties go to the smaller id; when the inputs hold fewer distinct ids than ``size``, the
    smallest unused ids fill the rest, so the map has exactly ``size`` ids (sorted).

    Raises:
      ConfigError: ``size`` above ``vocab_size``, below the number of special ids, or a special
        or input id outside the vocabulary.
    """
    special = sorted({int(i) for i in special_ids})
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= vocab_size:
        raise ConfigError(f"reduce-vocab: size={size!r} (expected 1..vocab_size={vocab_size})")
    if size < len(special):
        raise ConfigError(
            f"reduce-vocab: size={size} (expected >= {len(special)}, the number of special and "
            "EOS ids, which are always kept); pass a larger --size"
        )
    counts = np.zeros(vocab_size, np.int64)
    for tokens in token_lists:
        ids = np.asarray(tokens, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ConfigError(
                f"reduce-vocab: input id {int(ids.max())} (expected < vocab_size={vocab_size}); "
                "the tokenizer does not fit the model"
            )
        np.add.at(counts, ids, 1)
    for s in special:
        if not 0 <= s < vocab_size:
            raise ConfigError(
                f"reduce-vocab: special id {s} (expected 0 <= id < vocab_size={vocab_size})"
            )
    keep = np.zeros(vocab_size, bool)
    keep[special] = True
    # Stable sort by descending count: equal counts keep ascending id order.
    order = np.argsort(-counts, kind="stable")
    seen = order[(counts[order] > 0) & ~keep[order]]
    keep[seen[: size - len(special)]] = True
    keep[np.flatnonzero(~keep)[: size - int(keep.sum())]] = True
    return np.flatnonzero(keep).astype(np.int32)
