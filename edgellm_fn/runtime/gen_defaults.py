"""A checkpoint's ``generation_config.json`` sampling defaults, applied when the caller sets
nothing (as ``transformers.GenerationConfig``).

Without the file the library defaults hold (``LIBRARY``: greedy, ``defaults.DEFAULTS``). With
it, ``do_sample: false`` (the ``transformers`` default) means greedy; ``do_sample: true``
samples with the file's temperature / top_p / top_k / min_p, and ``transformers``' defaults
(1.0 / 1.0 / 50 / off) where it sets none. ``repetition_penalty`` and ``max_new_tokens`` apply
either way.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from ..config import read_json
from ..config.defaults import DEFAULTS
from ..errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerationDefaults:
    """Sampling values used where a request leaves one unset (None)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = DEFAULTS["max_new_tokens"]

    @classmethod
    def from_dir(cls, path: str | pathlib.Path, base: GenerationDefaults | None = None):
        """The defaults of a checkpoint directory (``base`` where it has no generation config).

        Raises:
          ConfigError: a field of ``generation_config.json`` with a wrong type or range.
        """
        base = LIBRARY if base is None else base
        root = pathlib.Path(path)
        file = root / "generation_config.json"
        if not root.is_dir() or not file.is_file():
            return base
        return cls.from_json(read_json(file, missing=None), str(file), base)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str, base: GenerationDefaults):
        """Defaults from the parsed ``generation_config.json`` (see the module docstring)."""
        sample = _get(data, "do_sample", bool, where, False)
        rep = _get(data, "repetition_penalty", float, where, 1.0)
        if not 0 < rep <= 100:
            raise ConfigError(f"{where}: repetition_penalty={rep} (expected 0 < value <= 100)")
        max_new = _get(data, "max_new_tokens", int, where, base.max_new_tokens)
        if max_new < 1:
            raise ConfigError(f"{where}: max_new_tokens={max_new} (expected an int >= 1)")
        if not sample:
            return cls(temperature=0.0, top_k=1, repetition_penalty=rep, max_new_tokens=max_new)
        temp = _get(data, "temperature", float, where, 1.0)
        top_p = _get(data, "top_p", float, where, 1.0)
        top_k = _get(data, "top_k", int, where, 50)
        min_p = _get(data, "min_p", float, where, 0.0)
        for name, value, ok in (
            ("temperature", temp, temp >= 0),
            ("top_p", top_p, 0 < top_p <= 1),
            ("top_k", top_k, top_k >= 0),
            ("min_p", min_p, 0 <= min_p <= 1),
        ):
            if not ok:
                raise ConfigError(f"{where}: {name}={value} (out of range)")
        return cls(
            temperature=temp,
            top_p=top_p,
            top_k=top_k,
            min_p=min_p,
            repetition_penalty=rep,
            max_new_tokens=max_new,
        )

    def resolve(self, name: str, value):
        """``value`` when the caller set it, else this default for ``name``."""
        return getattr(self, name) if value is None else value


#: The library's own defaults (no ``generation_config.json``): greedy, ``defaults.DEFAULTS``.
LIBRARY = GenerationDefaults(
    temperature=DEFAULTS["temperature"],
    top_p=DEFAULTS["top_p"],
    top_k=1,
    max_new_tokens=DEFAULTS["max_new_tokens"],
)


def _get(data: dict[str, Any], key: str, kind: type, where: str, default):
    value = data.get(key)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key}={value!r} (expected {kind.__name__})")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}={value!r} (expected a finite number)")
    return value


def defaults_for(tokenizer) -> GenerationDefaults:
    """The defaults of the checkpoint the tokenizer was loaded from (``Tokenizer.name`` is its
    directory), else ``LIBRARY``."""
    name = getattr(tokenizer, "name", None)
    return LIBRARY if not name else GenerationDefaults.from_dir(name)
