"""Reading config JSON and its fields strictly: every way a file or a field can be bad raises a
named ``ConfigError`` (the file, the field, what was expected)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..dtypes import FLOAT_DTYPES
from ..errors import ConfigError, show

DTYPES = FLOAT_DTYPES
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}
_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}

#: Sanity bounds of integer config fields: far above every released model of the family (Llama
#: 3.1 405B has 126 layers, hidden 16384, intermediate 53248; Llama 4 has a 10M context), far
#: below what would make a size computation or an allocation run for minutes.
LIMITS = {
    "vocab_size": 1 << 24,
    "hidden_size": 1 << 16,
    "intermediate_size": 1 << 20,
    "num_hidden_layers": 1024,
    "num_attention_heads": 1024,
    "num_key_value_heads": 1024,
    "head_dim": 1024,
    "max_position_embeddings": 1 << 24,
    "original_max_position_embeddings": 1 << 24,
    "sliding_window": 1 << 24,
    "max_batch_size": 1 << 16,
    "max_input_len": 1 << 24,
    "max_kv_cache_capacity": 1 << 24,
    "max_lora_rank": 1 << 12,
    "max_loras": 1 << 10,
    "reduced_vocab_size": 1 << 24,
}
#: Largest JSON file read whole (config.json, index, request files): 64 MiB.
MAX_JSON_BYTES = 64 << 20

def parse_json_bytes(data: bytes, where: str, error: type[ValueError] = ConfigError) -> Any:
    """Decodes UTF-8 JSON, raising ``error`` naming ``where`` for every way it can be bad.

    Non-UTF-8 bytes, syntax errors, nesting too deep for Python's parser and integers of more
    than 4300 digits all become ``error`` (never ``UnicodeDecodeError`` or ``RecursionError``).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(
            f"{where}: byte {e.start}={data[e.start : e.start + 1]!r} (expected UTF-8 text); "
            "re-save the file as UTF-8 JSON"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise error(
            f"{where}: JSON nesting too deep (expected a shallow JSON object); the file is "
            "corrupt or hostile"
        ) from None
    except ValueError as e:  # e.g. an integer literal of more than 4300 digits
        raise error(f"{where}: invalid JSON value ({e})") from None


def read_json_file(
    path: str | Path,
    error: type[ValueError] = ConfigError,
    what: str = "a Hugging Face config.json",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Reads a JSON file of at most ``max_bytes``, raising ``error`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found (expected {what})")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise error(
                f"{path}: size={size} bytes (expected <= {max_bytes} for {what}); this is not "
                "a JSON file of that kind"
            )
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    return parse_json_bytes(data, str(path), error)


def read_json(
    path: str | Path,
    *,
    missing: str | None = "expected a Hugging Face config.json",
    error: type[ValueError] = ConfigError,
) -> dict[str, Any]:
    """Reads a JSON object; every problem raises ``error`` naming the file.

    Args:
      path: the file.
      missing: what the file-not-found message expects; None returns ``{}`` for a missing file
        (optional files such as ``generation_config.json``).
      error: the error type (``ConfigError`` for configs, ``InputError`` for request files).
    """
    path = Path(path)
    if not path.is_file():
        if missing is None:
            return {}
        raise error(f"{path}: file not found ({missing})")
    raw = read_json_file(path, error, missing or "a JSON object")
    if not isinstance(raw, Mapping):
        raise error(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def checkpoint_dtype(raw: Mapping[str, Any]) -> str:
    """A config.json's weight dtype: ``dtype`` (transformers 5), else ``torch_dtype``, else
    float32; a bad value names the field it came from."""
    field = "dtype" if raw.get("dtype") else "torch_dtype"
    return normalize_dtype(raw.get(field) or "float32", field)


def normalize_dtype(name: Any, field: str) -> str:
    value = _DTYPE_ALIASES.get(name, name) if isinstance(name, str) else name
    if value not in DTYPES:
        raise ConfigError(f"config.json: {field}={show(name)} (expected one of {DTYPES})")
    return value


def _require_mapping(raw: Any, where: str) -> None:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(raw).__name__}")


def get_field(
    raw: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    error: type[ValueError] = ConfigError,
    **default,
):
    """Reads ``raw[key]`` checking its type (an int passes for float, a bool never for int).

    ``default=`` makes the field optional (missing or null gives the default); ``error`` is the
    error type raised, naming ``where`` and the field.
    """
    if key not in raw or (raw[key] is None and "default" in default):
        if "default" in default:
            return default["default"]
        raise error(f"{where}: missing required field {key!r}")
    value = raw[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise error(f"{where}: {key}={show(value)} (expected {names})")
    return value


_get = get_field


def _positive(raw: Mapping[str, Any], key: str, where: str, **default) -> int:
    """An integer field >= 1 and <= ``LIMITS[key]`` (when bounded)."""
    value = _get(raw, key, int, where, **default)
    if "default" in default and (key not in raw or raw[key] is None):
        return value
    if value < 1:
        raise ConfigError(f"{where}: {key}={value} (expected an integer >= 1)")
    limit = LIMITS.get(key)
    if limit is not None and value > limit:
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected <= {limit}, the sanity bound "
            f"config.LIMITS[{key!r}]); larger than any supported model, so the file is corrupt"
        )
    return value


def _real(
    raw: Mapping[str, Any], key: str, where: str, *, positive: bool = False, **default
) -> float | None:
    """A finite number (``positive``: > 0); ``default=`` makes it optional."""
    value = _get(raw, key, float, where, **default)
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected a finite number); NaN or infinity here "
            "makes every logit NaN"
        )
    if positive and number <= 0:
        raise ConfigError(f"{where}: {key}={show(value)} (expected a number > 0)")
    return number


def _token_id(raw: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    """An id or list of ids, each an int >= 0 (``eos_token_id`` may list several)."""
    value = raw.get(key)
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ConfigError(
            f"{where}: {key}={show(value)} (expected an int or a list of ints, each >= 0)"
        )
    return tuple(values)


