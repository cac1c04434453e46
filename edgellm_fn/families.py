"""Family-specific ``config.json`` fields: which family allows which, their defaults and checks.

``config._parse_model`` parses what every family shares; this module adds what differs between
Llama, Qwen2/3, Mistral, Gemma 2, Gemma 3 text and Phi-3, following each family's
``transformers`` config class (its defaults apply to absent fields). A field that changes the
network of some family but that this family's ``transformers`` class ignores is refused by name,
so a config edited for another family never loads with part of its meaning dropped.
NemotronH (hybrid Mamba2) passes the same check, then ``hybrid_config.py`` parses its fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, show

#: Fields that change the network, with the families whose transformers class reads them
#: (``None``/absent is always accepted: it means "not set").
SEMANTIC_FIELDS: dict[str, tuple[str, ...]] = {
    "hidden_act": ("llama", "qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"),
    "hidden_activation": ("gemma2", "gemma3_text"),
    "attention_bias": ("llama", "qwen3", "gemma2", "gemma3_text"),
    "mlp_bias": ("llama", "nemotron_h"),
    "use_sliding_window": ("qwen2", "qwen3"),
    "max_window_layers": ("qwen2", "qwen3"),
    "sliding_window": ("qwen2", "qwen3", "mistral", "phi3", "gemma2", "gemma3_text"),
    # Mistral's sliding_window applies to every layer; per-layer types are Ministral's.
    # NemotronH: an alias of layers_block_type (hybrid_config.py).
    "layer_types": ("qwen2", "qwen3", "gemma2", "gemma3_text", "nemotron_h"),
    "query_pre_attn_scalar": ("gemma2", "gemma3_text"),
    "final_logit_softcapping": ("gemma2", "gemma3_text"),
    "attn_logit_softcapping": ("gemma2", "gemma3_text"),
    "use_bidirectional_attention": ("gemma2", "gemma3_text"),
    "rope_local_base_freq": ("gemma3_text",),
    "sliding_window_pattern": ("gemma3_text",),
    "original_max_position_embeddings": ("phi3",),
}
GEMMA = ("gemma2", "gemma3_text")
#: transformers' defaults of fields whose default differs between families.
DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma2": dict(
        head_dim=256,
        tie_word_embeddings=True,
        sliding_window=4096,
        query_pre_attn_scalar=256,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        rope_theta=10000.0,
    ),
    "gemma3_text": dict(
        head_dim=256,
        tie_word_embeddings=True,
        sliding_window=4096,
        query_pre_attn_scalar=256,
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        rope_theta=1_000_000.0,
        rope_local_base_freq=10_000.0,
        sliding_window_pattern=6,
    ),
    "mistral": dict(sliding_window=4096),
    "phi3": dict(sliding_window=None),
}


def check_fields(raw: Mapping[str, Any], family: str, where: str) -> None:
    """Refuses a set field that changes the network of another family but not of this one."""
    for key, families in SEMANTIC_FIELDS.items():
        if family in families or raw.get(key) is None:
            continue
        if key in ("attention_bias", "mlp_bias", "use_sliding_window") and raw[key] is False:
            continue  # the value every other family implies
        readers = ", ".join(families)
        raise ConfigError(
            f"{where}: {key}={show(raw[key])} (expected absent or null for model_type "
            f"{family!r}; only {readers} read it); transformers would ignore it for this "
            "family, so the config was probably edited for another one"
        )


def optional_real(raw: Mapping[str, Any], key: str, where: str, default: float | None):
    """A number > 0, ``default`` when absent and None when null (soft-capping: off)."""
    if key not in raw:
        return default
    value = raw[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{where}: {key}={show(value)} (expected a finite number > 0 or null)")
    if value == float("inf"):
        raise ConfigError(f"{where}: {key}={show(value)} (expected a finite number > 0 or null)")
    return float(value)


def sliding_window(raw: Mapping[str, Any], family: str, where: str) -> int | None:
    """The family's ``sliding_window`` (absent: transformers' default; null: none)."""
    value = raw.get("sliding_window", DEFAULTS.get(family, {}).get("sliding_window"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 24:
        raise ConfigError(
            f"{where}: sliding_window={show(value)} (expected an integer 1..{1 << 24} or null)"
        )
    return value


def gemma_layer_types(raw: Mapping[str, Any], family: str, layers: int, where: str) -> list[str]:
    """Gemma's ``layer_types``; absent, every ``sliding_window_pattern``-th layer is global."""
    types = raw.get("layer_types")
    if types is not None:
        return types  # checked by the caller
    if family == "gemma2":
        pattern = 2
    else:
        pattern = raw.get("sliding_window_pattern", DEFAULTS[family]["sliding_window_pattern"])
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern < 1:
            raise ConfigError(
                f"{where}: sliding_window_pattern={show(pattern)} (expected an integer >= 1: "
                "every n-th layer is a global one)"
            )
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(layers)]


def gemma_fields(raw: Mapping[str, Any], family: str, hidden: int, where: str) -> dict[str, Any]:
    """Gemma 2/3's ModelConfig fields besides windows and rope."""
    if raw.get("use_bidirectional_attention"):
        raise ConfigError(
            f"{where}: use_bidirectional_attention={show(raw['use_bidirectional_attention'])} "
            "(expected false or null); bidirectional (encoder) Gemma is not a causal decoder"
        )
    d = DEFAULTS[family]
    scalar = optional_real(raw, "query_pre_attn_scalar", where, d["query_pre_attn_scalar"])
    if scalar is None:
        raise ConfigError(f"{where}: query_pre_attn_scalar=None (expected a number > 0)")
    return dict(
        norm_offset=1.0,
        sandwich_norms=True,
        embed_scale=hidden**0.5,
        query_pre_attn_scalar=scalar,
        attn_softcap=optional_real(
            raw, "attn_logit_softcapping", where, d["attn_logit_softcapping"]
        ),
        final_softcap=optional_real(
            raw, "final_logit_softcapping", where, d["final_logit_softcapping"]
        ),
    )


def gemma3_rope_params(
    raw: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Gemma 3's ``(global, local, where)`` rope parameter sets.

    transformers 5 writes ``rope_parameters = {"full_attention": {...}, "sliding_attention":
    {...}}``; older files have ``rope_theta`` (global), ``rope_local_base_freq`` and
    ``rope_scaling`` (global only).
    """
    d = DEFAULTS["gemma3_text"]
    params = raw.get("rope_parameters")
    if params is not None:
        rwhere = f"{where}: rope_parameters"
        if not isinstance(params, Mapping) or set(params) - {"full_attention", "sliding_attention"}:
            raise ConfigError(
                f"{rwhere}={show(params)} (expected an object with keys 'full_attention' and "
                "'sliding_attention', one rope parameter set per layer type)"
            )
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
        for name, part in (("full_attention", full), ("sliding_attention", local)):
            if not all(isinstance(k, str) for k in part):
                raise ConfigError(f"{rwhere}.{name}={show(part)} (expected an object)")
        full.setdefault("rope_theta", raw.get("rope_theta", d["rope_theta"]))
        local.setdefault("rope_theta", raw.get("rope_local_base_freq", d["rope_local_base_freq"]))
        return full, local, rwhere
    scaling = raw.get("rope_scaling") or {}
    if not isinstance(scaling, Mapping):
        raise ConfigError(f"{where}: rope_scaling={show(scaling)} (expected an object or null)")
    full = {**scaling, "rope_theta": raw.get("rope_theta", d["rope_theta"])}
    local = {"rope_theta": raw.get("rope_local_base_freq", d["rope_local_base_freq"])}
    return full, local, f"{where}: rope_scaling"
