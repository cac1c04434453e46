"""Hybrid Mamba2 + attention configs: ``MambaConfig``, ``HybridConfig`` and NemotronH parsing.

``model._parse_model`` hands a ``nemotron_h`` config.json here. The layer layout comes from
``layers_block_type`` (transformers 5), its alias ``layer_types``, or the older
``hybrid_override_pattern`` string (``M`` Mamba2, ``*`` attention, ``-`` MLP, ``E`` MoE)::

    "M*-M"  ->  ("mamba", "attention", "mlp", "mamba")

Only attention layers get KV slots; only Mamba layers get recurrent state
(``state/recurrent.py``). MoE layers are refused by name. ``MambaConfig`` is the mixer alone,
so a Bamba- or FalconH1-style parser can fill it from its own field names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, show
from .fields import (
    LIMITS,
    _positive,
    _real,
    _token_id,
    checkpoint_dtype,
    get_field,
    normalize_dtype,
)
from .model import ModelConfig
from .rope import RopeConfig

LAYER_KINDS = ("mamba", "attention", "mlp")
#: ``hybrid_override_pattern`` characters and ``layers_block_type`` names (with transformers'
#: legacy spellings) -> layer kind; ``moe`` is recognised only to be refused by name.
PATTERN_CHARS = {"M": "mamba", "*": "attention", "-": "mlp", "E": "moe"}
BLOCK_NAMES = {
    "linear_attention": "mamba",
    "mamba": "mamba",
    "full_attention": "attention",
    "attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}
#: Activations of the Mamba conv (``mamba_hidden_act``) and of the MLP (``mlp_hidden_act``).
CONV_ACTIVATIONS = ("silu", "swish", "relu", "gelu")
MLP_ACTIVATIONS = ("relu2", "relu", "silu", "gelu", "gelu_new", "gelu_pytorch_tanh")
#: Old NemotronH field names transformers still reads, with their current names.
ALIASES = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
}
#: Mamba fields without a default here: they size the recurrent state, so a config missing one
#: is truncated or edited (transformers' defaults are those of one 30B checkpoint).
REQUIRED_MAMBA = ("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel")
LIMITS_MAMBA = {
    "mamba_num_heads": 1 << 12,
    "mamba_head_dim": 1 << 12,
    "ssm_state_size": 1 << 12,
    "n_groups": 1 << 12,
    "conv_kernel": 64,
    "chunk_size": 1 << 14,
    "expand": 64,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MambaConfig:
    """One Mamba2 mixer's geometry and options (every Mamba layer of a model shares them).

    Attributes:
      num_heads, head_dim: SSM heads and channels per head (``intermediate = heads * head_dim``).
      state_size: ``d_state``, the SSM state per channel.
      n_groups: groups sharing one B and C (``num_heads % n_groups == 0``).
      conv_kernel: width of the causal depthwise conv over ``(x, B, C)``.
      chunk_size: tokens per chunk of the prefill scan (numerics only, not the result).
      activation: the conv's activation.
      conv_bias: the conv has a bias.
      proj_bias: ``in_proj``/``out_proj`` have biases.
      norm_eps: epsilon of the gated RMSNorm.
      norm_group_size: channels each gated-RMSNorm group normalises (NemotronH:
        ``intermediate / n_groups``; Bamba: ``intermediate``).
      dt_limit: ``(lo, hi)`` clamp of the softplus time step in the chunked prefill scan (the
        single-step decode update does not clamp, as transformers and ``mamba_ssm``).
      ssm_dtype: dtype of the SSM state (``mamba_ssm_cache_dtype``); the conv state takes the
        model dtype.
    """

    num_heads: int
    head_dim: int
    state_size: int
    n_groups: int
    conv_kernel: int
    chunk_size: int
    activation: str
    conv_bias: bool
    proj_bias: bool
    norm_eps: float
    norm_group_size: int
    dt_limit: tuple[float, float]
    ssm_dtype: str

    @property
    def intermediate_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the conv (upstream's ``convDim``): ``intermediate + 2 * groups * N``."""
        return self.intermediate_size + 2 * self.n_groups * self.state_size

    @property
    def in_proj_size(self) -> int:
        """Rows of ``in_proj``: gate ``z``, conv input ``(x, B, C)`` and one ``dt`` per head."""
        return self.intermediate_size + self.conv_dim + self.num_heads


@dataclasses.dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """Layer layout of a hybrid model.

    Attributes:
      layer_types: per layer ``"mamba"``, ``"attention"`` or ``"mlp"``.
      mamba: the Mamba2 mixer of every ``"mamba"`` layer.
    """

    layer_types: tuple[str, ...]
    mamba: MambaConfig

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Model layer index of each KV-cache layer (KV layer ``i`` is model layer ``[i]``)."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "attention")

    @property
    def mamba_layers(self) -> tuple[int, ...]:
        """Model layer index of each recurrent-state layer."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "mamba")


def _pick(raw: Mapping[str, Any], key: str, where: str) -> Any:
    """``raw[key]``, or its legacy alias; both present with different values is an error."""
    old = [a for a, new in ALIASES.items() if new == key and a in raw]
    if old and key in raw and raw[old[0]] != raw[key]:
        raise ConfigError(
            f"{where}: {old[0]}={show(raw[old[0]])} contradicts {key}={show(raw[key])} (expected "
            f"one of them, or equal values; {old[0]} is the old name of {key})"
        )
    return raw[key] if key in raw else raw[old[0]] if old else None


def _layer_types(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    sources = {}
    for key in ("layers_block_type", "layer_types"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {key}={show(value)} (expected a list of layer names)")
        bad = [v for v in value if v not in BLOCK_NAMES]
        if bad:
            raise ConfigError(
                f"{where}: {key} has {show(bad[0])} (expected each of {sorted(BLOCK_NAMES)})"
            )
        sources[key] = tuple(BLOCK_NAMES[v] for v in value)
    pattern = raw.get("hybrid_override_pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or not all(c in PATTERN_CHARS for c in pattern):
            raise ConfigError(
                f"{where}: hybrid_override_pattern={show(pattern)} (expected a string of "
                "M (Mamba2), * (attention), - (MLP) and E (MoE))"
            )
        sources["hybrid_override_pattern"] = tuple(PATTERN_CHARS[c] for c in pattern)
    if not sources:
        raise ConfigError(
            f"{where}: missing required field 'hybrid_override_pattern' (or 'layers_block_type'); "
            "a NemotronH config must say which layers are Mamba2, attention and MLP"
        )
    (first, types), *rest = sources.items()
    for other, theirs in rest:
        if theirs != types:
            raise ConfigError(
                f"{where}: {other} gives layers {list(theirs)} but {first} gives {list(types)} "
                "(expected one layout)"
            )
    if not types:
        raise ConfigError(f"{where}: {first} is empty (expected at least one layer)")
    if len(types) > LIMITS["num_hidden_layers"]:
        raise ConfigError(
            f"{where}: {first} has {len(types)} layers (expected <= {LIMITS['num_hidden_layers']})"
        )
    if "moe" in types:
        raise ConfigError(
            f"{where}: {first} has a MoE layer at index {types.index('moe')} (expected only "
            "Mamba2, attention and MLP layers); NemotronH mixture-of-experts layers are not "
            "supported"
        )
    if "attention" not in types:
        raise ConfigError(
            f"{where}: {first}={list(types)} has no attention layer (expected at least one); "
            "the runtime's KV cache and lengths live on attention layers"
        )
    layers = raw.get("num_hidden_layers")
    if layers is not None and layers != len(types):
        raise ConfigError(
            f"{where}: num_hidden_layers={show(layers)} (expected {len(types)}, the length of "
            f"{first})"
        )
    return types


def _mamba_int(raw: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = _pick(raw, key, where)
    if value is None:
        if default is None:
            raise ConfigError(
                f"{where}: missing required field {key!r} (expected an integer >= 1); it sizes "
                "the Mamba2 recurrent state"
            )
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key}={show(value)} (expected an integer >= 1)")
    if value > LIMITS_MAMBA[key]:
        raise ConfigError(f"{where}: {key}={value} (expected <= {LIMITS_MAMBA[key]})")
    return value


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = _pick(raw, key, where)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key}={show(value)} (expected a bool)")
    return value


def _time_step_limit(raw: Mapping[str, Any], where: str) -> tuple[float, float]:
    """``time_step_limit`` as two floats; JSON infinity may be written ``{"__float__": ...}``."""
    value = _pick(raw, "time_step_limit", where)
    if value is None:
        return (0.0, math.inf)

    def number(v: Any) -> float | None:
        if isinstance(v, Mapping) and set(v) == {"__float__"}:
            v = v["__float__"]
            try:
                return float(v) if isinstance(v, str) else None
            except ValueError:
                return None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v)

    pair = [number(v) for v in value] if isinstance(value, list) else []
    bad = len(pair) != 2 or None in pair or any(math.isnan(v) for v in pair)
    # The scan clamps softplus(dt) >= 0 into [lo, hi]: an infinite lo or hi <= 0 gives NaN or
    # a state that grows without bound.
    if bad or not math.isfinite(pair[0]) or pair[0] > pair[1] or pair[1] <= 0:
        raise ConfigError(
            f"{where}: time_step_limit={show(value)} (expected [lo, hi] numbers with lo finite, "
            "lo <= hi and hi > 0)"
        )
    return (pair[0], pair[1])


def parse_nemotron_h(raw: Mapping[str, Any], arch: str, where: str) -> ModelConfig:
    """The ``ModelConfig`` of a NemotronH ``config.json`` (``NemotronHConfig`` in transformers).

    Absent fields take transformers' defaults, except the Mamba geometry (``REQUIRED_MAMBA``).
    Fields that transformers' NemotronH declares but ignores are refused when they would change
    the network (``mamba_proj_bias``, ``residual_in_fp32``); ``expand`` is informational (the
    mixer is ``mamba_num_heads * mamba_head_dim`` wide, which Nemotron-Nano-9B-v2 sets apart
    from ``expand * hidden_size``).

    Raises:
      ConfigError: a missing or bad field, a MoE layer, or contradictory dims.
    """
    types = _layer_types(raw, where)
    for key in ("mamba_proj_bias", "residual_in_fp32"):
        if raw.get(key):
            raise ConfigError(
                f"{where}: {key}={show(raw[key])} (expected false or absent); transformers' "
                "NemotronH ignores it, so a checkpoint that needs it would not match either"
            )
    hidden = _positive(raw, "hidden_size", where)
    heads = _positive(raw, "num_attention_heads", where, default=32)
    kv_heads = _positive(raw, "num_key_value_heads", where, default=8)
    if heads % kv_heads:
        raise ConfigError(
            f"{where}: num_key_value_heads={kv_heads} (expected a divisor of "
            f"num_attention_heads={heads})"
        )
    head_dim = _positive(raw, "head_dim", where, default=128)
    eps = _real(raw, "layer_norm_epsilon", where, positive=True, default=1e-5)

    mamba_heads = _mamba_int(raw, "mamba_num_heads", where)
    mamba_head_dim = _mamba_int(raw, "mamba_head_dim", where)
    state = _mamba_int(raw, "ssm_state_size", where)
    groups = _mamba_int(raw, "n_groups", where)
    kernel = _mamba_int(raw, "conv_kernel", where)
    chunk = _mamba_int(raw, "chunk_size", where, default=128)
    _mamba_int(raw, "expand", where, default=2)  # checked, not used (docstring)
    if mamba_heads % groups:
        raise ConfigError(
            f"{where}: n_groups={groups} (expected a divisor of mamba_num_heads={mamba_heads}); "
            "each group's B and C serve mamba_num_heads / n_groups heads"
        )
    if kernel < 2:
        raise ConfigError(
            f"{where}: conv_kernel={kernel} (expected >= 2; the conv state holds kernel - 1 tokens)"
        )
    act = get_field(raw, "mamba_hidden_act", str, where, default="silu")
    if act not in CONV_ACTIVATIONS:
        raise ConfigError(f"{where}: mamba_hidden_act={show(act)} (expected one of "
                          f"{CONV_ACTIVATIONS})")  # fmt: skip
    mlp_act = get_field(raw, "mlp_hidden_act", str, where, default="relu2")
    if mlp_act not in MLP_ACTIVATIONS:
        raise ConfigError(
            f"{where}: mlp_hidden_act={show(mlp_act)} (expected one of {MLP_ACTIVATIONS})"
        )
    for key in ("time_step_min", "time_step_max", "time_step_floor"):  # initialisation only
        _real(_aliased(raw, key, where), key, where, default=0.0)
    # The chunked scan clamps the time step to time_step_limit, as mamba_ssm and transformers
    # >= 5.25 do (transformers <= 5.24 clamped at (time_step_min, inf) instead).
    dt_limit = _time_step_limit(raw, where)
    ssm_dtype = raw.get("mamba_ssm_cache_dtype") or "float32"
    mamba = MambaConfig(
        num_heads=mamba_heads,
        head_dim=mamba_head_dim,
        state_size=state,
        n_groups=groups,
        conv_kernel=kernel,
        chunk_size=chunk,
        activation="silu" if act == "swish" else act,
        conv_bias=_bool(raw, "use_conv_bias", where, True),
        proj_bias=_bool(raw, "use_bias", where, False),
        norm_eps=eps,
        norm_group_size=mamba_heads * mamba_head_dim // groups,
        dt_limit=dt_limit,
        ssm_dtype=normalize_dtype(ssm_dtype, "mamba_ssm_cache_dtype"),
    )
    conv_dim = raw.get("conv_dim")  # Edge-LLM's convDim, when an exporter writes it
    if conv_dim is not None and conv_dim != mamba.conv_dim:
        raise ConfigError(
            f"{where}: conv_dim={show(conv_dim)} (expected mamba_num_heads * mamba_head_dim + 2 "
            f"* n_groups * ssm_state_size = {mamba.conv_dim}); the conv dims are inconsistent"
        )
    bos = _token_id(raw, "bos_token_id", where)
    max_pos = _positive(raw, "max_position_embeddings", where, default=4096)
    return ModelConfig(
        architecture=arch,
        vocab_size=_positive(raw, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=_positive(raw, "intermediate_size", where, default=21504),
        num_hidden_layers=len(types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=eps,
        hidden_act=mlp_act,
        tie_word_embeddings=get_field(raw, "tie_word_embeddings", bool, where, default=False),
        qkv_bias=False,
        o_bias=False,
        mlp_bias=get_field(raw, "mlp_bias", bool, where, default=False),
        qk_norm=False,
        sliding_windows=(0,) * len(types),
        # Unused: NemotronH attention has no rotary embedding (the engine binds no rope table).
        rope=RopeConfig(rope_type="default", theta=10000.0, rotary_dim=2 * (head_dim // 2)),
        max_position_embeddings=max_pos,
        dtype=checkpoint_dtype(raw),
        bos_token_id=bos[0] if bos else None,
        eos_token_ids=_token_id(raw, "eos_token_id", where),
        hybrid=HybridConfig(layer_types=types, mamba=mamba),
    )


def _aliased(raw: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    """``{key: value}`` with the legacy alias resolved (for the ``config`` readers)."""
    value = _pick(raw, key, where)
    return {} if value is None else {key: value}
