"""RoPE parameters of ``config.json`` (``rope_parameters`` or ``rope_theta`` + ``rope_scaling``),
checked per rope type (``RopeConfig``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, show
from .fields import _get, _positive, _real, _require_mapping

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """Rotary embedding parameters (the ``rope_parameters``/``rope_scaling`` of config.json).

    Attributes:
      rope_type: one of ``ROPE_TYPES``.
      theta: base frequency.
      rotary_dim: rotated channels of each head (``head_dim * partial_rotary_factor``).
      factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: scaling.
      beta_fast, beta_slow, truncate, attention_factor, mscale, mscale_all_dim: YaRN.
      short_factor, long_factor: LongRoPE per-frequency factors.
    """

    rope_type: str
    theta: float
    rotary_dim: int
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()


def _parse_rope(
    raw: Mapping[str, Any], head_dim: int, max_pos: int, where: str, family: str = "llama"
) -> RopeConfig:
    """Accepts both ``rope_parameters`` (transformers 5) and ``rope_theta``+``rope_scaling``."""
    params = raw.get("rope_parameters")
    rwhere = f"{where}: rope_parameters"
    if params is None:
        rwhere = f"{where}: rope_scaling"
        scaling = raw.get("rope_scaling")
        if scaling is None:
            scaling = {}
        _require_mapping(scaling, rwhere)
        params = dict(scaling)
        if "rope_theta" in raw:
            params.setdefault("rope_theta", raw["rope_theta"])
    _require_mapping(params, rwhere)
    if params and all(isinstance(v, Mapping) for v in params.values()):
        raise ConfigError(f"{rwhere}: per-layer-type rope parameters are not supported")
    params = dict(params)
    if "partial_rotary_factor" in raw:
        params.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    if family == "phi3" and raw.get("original_max_position_embeddings") is not None:
        params.setdefault(
            "original_max_position_embeddings", raw["original_max_position_embeddings"]
        )
    return _rope_from_params(params, head_dim, max_pos, rwhere)


def _rope_from_params(
    params: Mapping[str, Any], head_dim: int, max_pos: int, rwhere: str
) -> RopeConfig:
    """One rope parameter set (``rope_type``, ``rope_theta``, scaling fields) checked."""
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "su":  # Phi-3's first name of longrope (transformers maps it the same way)
        rope_type = "longrope"
    if not isinstance(rope_type, str) or rope_type not in ROPE_TYPES:
        raise ConfigError(f"{rwhere}: rope_type={show(rope_type)} (expected one of {ROPE_TYPES})")
    theta = _real(params, "rope_theta", rwhere, positive=True, default=10000.0)
    prf = _real(params, "partial_rotary_factor", rwhere, default=1.0)
    if not 0.0 < prf <= 1.0:
        raise ConfigError(f"{rwhere}: partial_rotary_factor={prf} (expected 0 < value <= 1)")
    rotary_dim = int(head_dim * prf)
    if rotary_dim < 2 or rotary_dim % 2:
        raise ConfigError(
            f"{rwhere}: rotary dim head_dim*partial_rotary_factor={rotary_dim} (expected an even "
            "number >= 2)"
        )
    fields: dict[str, Any] = {"rope_type": rope_type, "theta": theta, "rotary_dim": rotary_dim}
    if rope_type in ("llama3", "yarn", "longrope"):
        # transformers 5 (standardize_rope_params): absent, it is max_position_embeddings.
        fields["original_max_position_embeddings"] = _positive(
            params, "original_max_position_embeddings", rwhere, default=max_pos
        )
    orig = fields.get("original_max_position_embeddings", max_pos)
    if rope_type in ("linear", "dynamic", "llama3", "yarn"):
        factor = _real(params, "factor", rwhere, positive=True, default=None)
        if factor is None and rope_type == "yarn":
            factor = max_pos / orig
        if factor is None:
            raise ConfigError(
                f"{rwhere}: missing required field 'factor' for rope_type={rope_type!r}"
            )
        fields["factor"] = factor
    if rope_type == "llama3":
        low = _real(params, "low_freq_factor", rwhere, positive=True)
        high = _real(params, "high_freq_factor", rwhere, positive=True)
        if high <= low:
            raise ConfigError(
                f"{rwhere}: high_freq_factor={high} (expected > low_freq_factor={low})"
            )
        fields["low_freq_factor"], fields["high_freq_factor"] = low, high
    if rope_type == "dynamic":
        fields["original_max_position_embeddings"] = max_pos
    if rope_type == "yarn":
        fields["beta_fast"] = _real(params, "beta_fast", rwhere, positive=True, default=32.0)
        fields["beta_slow"] = _real(params, "beta_slow", rwhere, positive=True, default=1.0)
        fields["truncate"] = _get(params, "truncate", bool, rwhere, default=True)
        fields["attention_factor"] = _real(
            params, "attention_factor", rwhere, positive=True, default=None
        )
        for key in ("mscale", "mscale_all_dim"):
            fields[key] = _real(params, key, rwhere, default=None)
    if rope_type == "longrope":
        for key in ("short_factor", "long_factor"):
            value = _get(params, key, list, rwhere)
            if len(value) != rotary_dim // 2:
                raise ConfigError(
                    f"{rwhere}: {key} has {len(value)} entries (expected rotary_dim/2="
                    f"{rotary_dim // 2})"
                )
            items = {f"{key}[{i}]": v for i, v in enumerate(value)}
            fields[key] = tuple(_real(items, k, rwhere, positive=True) for k in items)
        factor = _real(params, "factor", rwhere, positive=True, default=None)
        fields["factor"] = factor if factor is not None else max_pos / orig
        af = _real(params, "attention_factor", rwhere, positive=True, default=None)
        if af is None:
            f = fields["factor"]
            if f > 1.0 and orig < 2:
                raise ConfigError(
                    f"{rwhere}: original_max_position_embeddings={orig} (expected >= 2 when "
                    "factor > 1 and attention_factor is unset: it divides by log(value)); set "
                    "attention_factor or the pretraining context length"
                )
            af = 1.0 if f <= 1.0 else math.sqrt(1 + math.log(f) / math.log(orig))
        fields["attention_factor"] = af
    return RopeConfig(**fields)

