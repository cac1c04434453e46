"""Error types. Every message reads ``"<where>: <field>=<got> (expected <constraint>); <fix>"``."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config.json field is missing, of the wrong type, unsupported or contradictory."""


class CheckpointError(ValueError):
    """A weight file is missing, truncated, or holds a tensor of the wrong shape."""


class AdapterError(CheckpointError):
    """A LoRA adapter does not fit the engine (file, option, target module, rank or shape)."""


class InputError(ValueError):
    """A step input (shape, dtype, length, batch, capacity) is invalid; the state is untouched."""


class EngineError(ValueError):
    """A tensor map or engine does not match the engine contract (binding, shape, dtype)."""


class TensorParallelError(ConfigError):
    """A model cannot be split over the requested devices (``engine/sharding.py``)."""


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a hostile value cannot flood a message."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deep, or an int of > 4300 digits
        return f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else f"{text[: limit - 15]}...<{len(text)} chars>"
