"""The text decoders of Qwen2-VL, Qwen2.5-VL and Qwen3-VL: their ``config.json`` fields.

A VL checkpoint holds a vision tower and a text decoder; only the decoder loads (its inputs are
embeddings and 3-D position ids, the vision encoder is out of scope). ``text_fields`` turns the
file into the flat fields ``config._parse_model`` reads for the decoder's base family (Qwen2 for
Qwen2/2.5-VL, Qwen3 for Qwen3-VL) and parses what MRoPE adds, following transformers 5:

- the decoder's fields sit in ``text_config`` (transformers 5) or at the top level (older
  files); ``tie_word_embeddings`` and ``dtype`` may sit at the top level;
- ``rope_parameters`` / ``rope_scaling`` carry ``mrope_section`` (frequencies per position axis:
  temporal, height, width; they sum to ``rotary_dim / 2``) and, for Qwen3-VL,
  ``mrope_interleaved`` (transformers' Qwen3-VL always interleaves: ``false`` is refused);
- Qwen3-VL's deepstack feature count is ``len(vision_config.deepstack_visual_indexes)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ConfigError, show

#: architecture -> family (the ``model_type`` of the full VL config).
ARCHITECTURES = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
}
#: ``model_type`` of a text-decoder config on its own (a saved ``text_config``) -> family.
TEXT_MODEL_TYPES = {f"{f}_text": f for f in ARCHITECTURES.values()}
#: family -> the dense family whose fields and network the text decoder shares.
BASE = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen3_vl": "qwen3"}
#: transformers' defaults of the text configs where they differ from ``config.py``'s.
DEFAULTS: dict[str, dict[str, Any]] = {
    "qwen2_vl": dict(rope_theta=1_000_000.0, rms_norm_eps=1e-5, max_position_embeddings=32768),
    "qwen3_vl": dict(
        rope_theta=500_000.0, rms_norm_eps=1e-6, max_position_embeddings=128000, head_dim=128
    ),
}
DEFAULTS["qwen2_5_vl"] = DEFAULTS["qwen2_vl"]
#: transformers' ``mrope_section`` when the file has none.
DEFAULT_SECTIONS = {"qwen2_vl": (16, 24, 24), "qwen2_5_vl": (16, 24, 24), "qwen3_vl": (24, 20, 20)}
#: Qwen3-VL's vision config default of ``deepstack_visual_indexes``.
DEFAULT_DEEPSTACK_INDEXES = (8, 16, 24)
#: Fields the Qwen3-VL text config lacks although Qwen3's reads them (transformers ignores them).
_QWEN3_VL_IGNORED = ("use_sliding_window", "sliding_window", "max_window_layers", "layer_types")


def text_fields(
    raw: Mapping[str, Any], family: str, where: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(flat text fields, VL fields, where)`` of a VL config (or of its text config alone).

    The flat fields have the family's defaults filled in and ``mrope_section`` /
    ``mrope_interleaved`` removed from the rope parameters (``rope_type: "mrope"`` becomes
    ``"default"``, as transformers maps it). The VL fields are ``mrope_section`` (a tuple, checked
    against ``rotary_dim`` by ``check_sections`` once the head size is known),
    ``mrope_interleaved`` and ``num_deepstack_features``.

    Raises:
      ConfigError: a malformed ``text_config`` or rope object, an ``mrope_section`` that is not
        three integers >= 0, ``mrope_interleaved`` contradicting the family, a field this
        family's transformers class ignores, or a bad deepstack layer list.
    """
    text_where = where
    if raw.get("text_config") is not None:
        nested = raw["text_config"]
        text_where = f"{where}: text_config"
        if not isinstance(nested, Mapping):
            raise ConfigError(f"{text_where}={show(nested)} (expected an object)")
        want = f"{family}_text"
        if nested.get("model_type") not in (None, want):
            raise ConfigError(
                f"{text_where}: model_type={show(nested.get('model_type'))} (expected {want!r}, "
                f"the text decoder of {family!r})"
            )
        text = dict(nested)
        for key in ("dtype", "torch_dtype"):
            if text.get(key) is None and raw.get(key) is not None:
                text[key] = raw[key]
    else:
        text = {k: v for k, v in raw.items() if k not in ("vision_config", "architectures")}
    text.pop("model_type", None)
    text.pop("architectures", None)
    # transformers ties when either level asks for it (Qwen2VLConfig.__post_init__).
    tied = [raw.get("tie_word_embeddings"), text.get("tie_word_embeddings")]
    for value in tied:
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{where}: tie_word_embeddings={show(value)} (expected a bool)")
    text["tie_word_embeddings"] = any(tied)
    for key, value in DEFAULTS[family].items():
        if key != "rope_theta" and text.get(key) is None:  # rope_theta: in _mrope_fields
            text[key] = value
    if family == "qwen3_vl":
        for key in _QWEN3_VL_IGNORED:
            if text.get(key) not in (None, False):
                raise ConfigError(
                    f"{text_where}: {key}={show(text[key])} (expected absent or null for "
                    "qwen3_vl; its text decoder has no sliding window and transformers would "
                    "ignore it)"
                )
            text.pop(key, None)
    else:
        _check_head_dim(text, text_where)
    sections, interleaved = _mrope_fields(text, family, text_where)
    vl = dict(
        mrope_section=sections,
        mrope_interleaved=interleaved,
        num_deepstack_features=_deepstack_count(raw, text, family, where),
    )
    return text, vl, text_where


def check_sections(sections: tuple[int, ...], rotary_dim: int, where: str) -> None:
    """Refuses an ``mrope_section`` whose entries do not sum to ``rotary_dim / 2``."""
    if sum(sections) != rotary_dim // 2:
        raise ConfigError(
            f"{where}: mrope_section={list(sections)} sums to {sum(sections)} (expected "
            f"rotary_dim/2={rotary_dim // 2}: one entry per position axis t, h, w, together "
            "covering every rotary frequency of a head); the section was made for another "
            "head size"
        )


def _mrope_fields(text: dict[str, Any], family: str, where: str) -> tuple[tuple[int, ...], bool]:
    """Pops ``mrope_section``/``mrope_interleaved`` from the rope object and checks them."""
    key = "rope_parameters" if text.get("rope_parameters") is not None else "rope_scaling"
    params = text.get(key)
    rwhere = f"{where}: {key}"
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"{rwhere}={show(params)} (expected an object or null)")
    params = dict(params)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in ("default", "mrope"):
        raise ConfigError(
            f"{rwhere}: rope_type={show(kind)} (expected 'default' or 'mrope' for {family}); "
            "other rope types are not verified against transformers' MRoPE"
        )
    params.pop("type", None)
    params["rope_type"] = "default"
    if text.get("rope_theta") is not None:
        params.setdefault("rope_theta", text["rope_theta"])
    params.setdefault("rope_theta", DEFAULTS[family]["rope_theta"])
    sections = params.pop("mrope_section", None)
    if sections is None:
        sections = DEFAULT_SECTIONS[family]
    if (
        not isinstance(sections, (list, tuple))
        or len(sections) != 3
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in sections)
        or min(sections) < 0
    ):
        raise ConfigError(
            f"{rwhere}: mrope_section={show(sections)} (expected 3 integers >= 0: the rotary "
            "frequencies of the temporal, height and width position axes)"
        )
    interleaved = params.pop("mrope_interleaved", None)
    if interleaved is not None and not isinstance(interleaved, bool):
        raise ConfigError(f"{rwhere}: mrope_interleaved={show(interleaved)} (expected a bool)")
    if family == "qwen3_vl" and interleaved is False:
        raise ConfigError(
            f"{rwhere}: mrope_interleaved=False (expected true or absent for qwen3_vl); "
            "transformers' Qwen3-VL always interleaves the t, h, w frequencies"
        )
    if family != "qwen3_vl" and interleaved:
        raise ConfigError(
            f"{rwhere}: mrope_interleaved=True (expected false or absent for {family}); "
            "transformers' Qwen2-VL text model lays the sections out contiguously"
        )
    text.pop("rope_scaling", None)
    text.pop("rope_theta", None)
    text["rope_parameters"] = params
    return tuple(sections), family == "qwen3_vl"


def _check_head_dim(text: Mapping[str, Any], where: str) -> None:
    """Qwen2(.5)-VL attention uses ``hidden_size // num_attention_heads``; refuse another."""
    head_dim, hidden, heads = (
        text.get(k) for k in ("head_dim", "hidden_size", "num_attention_heads")
    )
    if head_dim is None or not isinstance(hidden, int) or not isinstance(heads, int) or not heads:
        return
    if head_dim != hidden // heads:
        raise ConfigError(
            f"{where}: head_dim={show(head_dim)} (expected absent or hidden_size/"
            f"num_attention_heads={hidden // heads}); the Qwen2-VL text attention derives its "
            "head size and ignores this field"
        )


def _deepstack_count(
    raw: Mapping[str, Any], text: Mapping[str, Any], family: str, where: str
) -> int:
    """Qwen3-VL: ``len(vision_config.deepstack_visual_indexes)``; 0 for Qwen2(.5)-VL.

    A text config alone has no vision config: it may give ``num_deepstack_features`` (the
    upstream engine field), else 0.
    """
    given = text.get("num_deepstack_features", raw.get("num_deepstack_features"))
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 0):
        raise ConfigError(
            f"{where}: num_deepstack_features={show(given)} (expected an integer >= 0)"
        )
    vision = raw.get("vision_config")
    if family != "qwen3_vl":
        if given:
            raise ConfigError(
                f"{where}: num_deepstack_features={given} (expected 0 or absent for {family}); "
                "only Qwen3-VL adds deepstack features"
            )
        return 0
    if vision is None:
        return given or 0
    if not isinstance(vision, Mapping):
        raise ConfigError(f"{where}: vision_config={show(vision)} (expected an object)")
    indexes = vision.get("deepstack_visual_indexes")
    if indexes is None:
        indexes = DEFAULT_DEEPSTACK_INDEXES
    if not isinstance(indexes, (list, tuple)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indexes
    ):
        raise ConfigError(
            f"{where}: vision_config.deepstack_visual_indexes={show(indexes)} (expected a list "
            "of vision layer indexes >= 0)"
        )
    if given is not None and given != len(indexes):
        raise ConfigError(
            f"{where}: num_deepstack_features={given} contradicts "
            f"vision_config.deepstack_visual_indexes={list(indexes)} (expected {len(indexes)})"
        )
    return len(indexes)
